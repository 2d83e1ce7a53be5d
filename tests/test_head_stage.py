"""The head stage: cheap head-only trials first, and fine-tuning trials settled on the best one's head settings."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner
from optuna.trial import TrialState

from tuner.cli import cli
from tuner.errors import TunerError
from tuner.search._head_stage import HeadSettledSampler, StageUnpruned, check_head_stage
from tuner.space._space import load_space, parse_space
from tuner.config import StudyConfig
from tuner.search._note import study_note
from tuner.search._samplers import make_pruner, make_sampler
from tuner.search._study import study_space
from tuner.service._open import create_study

optuna.logging.set_verbosity(optuna.logging.WARNING)

SPACE = """\
description: Head stage test space.
params:
  freeze: {type: categorical, choices: [head, last_blocks]}
  lr:
    - {type: float, low: 1.0e-4, high: 1.0e-2, log: true, when: {freeze: head}}
    - {type: float, low: 1.0e-4, high: 1.0e-2, log: true, when: {freeze: last_blocks}}
  backbone_lr: {type: float, low: 1.0e-6, high: 1.0e-4, log: true, when: {freeze: last_blocks}}
  dropout: {type: float, low: 0.1, high: 0.5}
  weight_decay: {type: float, low: 1.0e-6, high: 1.0e-4, log: true}
"""


def sampler_for(config: StudyConfig, seed: int):
    """The study's sampler, its space parsed from the config's text as a study opens it."""
    return make_sampler(config, study_space(config), seed)


def pruner_for(config: StudyConfig):
    return make_pruner(config, study_space(config))


def config(text: str = SPACE, **kw) -> StudyConfig:
    return StudyConfig(space_name="t", space_text=text, data="digits", model="resnet18", **kw)


def head_score(params: dict) -> float:
    """Both peak at lr 1e-3, dropout 0.2; fine-tuning trials score higher (so TPE keeps drawing them)."""
    score = 1.0 - abs(math.log10(params["lr"]) + 3) / 2 - abs(params["dropout"] - 0.2)
    return score if params["freeze"] == "head" else score + 1


def run_study(sampler: optuna.samplers.BaseSampler, space_text: str, head_trials: int, n: int) -> optuna.Study:
    space = parse_space(space_text, source="t.yaml", name="t")
    study = optuna.create_study(direction="maximize", sampler=sampler)
    for _ in range(head_trials):
        study.enqueue_trial({"freeze": "head"})
    study.optimize(lambda trial: head_score(space.sample(trial, {"task": "single_label"})), n_trials=n)
    return study


def best_head_before(study: optuna.Study, number: int) -> optuna.trial.FrozenTrial:
    heads = [t for t in study.trials if t.number < number and t.params["freeze"] == "head"]
    return max(heads, key=lambda t: t.value)


@pytest.mark.parametrize("startup", [40, 5], ids=["independent sampling", "multivariate TPE's model"])
def test_fine_tuning_trials_take_lr_and_dropout_from_the_best_head_trial_so_far(startup):
    tpe = optuna.samplers.TPESampler(seed=0, multivariate=True, group=True, constant_liar=True,
                                     n_startup_trials=startup)
    study = run_study(HeadSettledSampler(tpe), SPACE, head_trials=4, n=30)
    tuning = [t for t in study.trials if t.params["freeze"] == "last_blocks"]
    assert len(tuning) >= 5 and all(t.number >= 4 for t in tuning)
    for trial in tuning:
        best = best_head_before(study, trial.number)
        assert (trial.params["lr"], trial.params["dropout"]) == (best.params["lr"], best.params["dropout"])
    # Everything else is still searched, and head-only trials are never settled.
    assert len({t.params["backbone_lr"] for t in tuning}) == len(tuning)
    assert len({t.params["weight_decay"] for t in tuning}) == len(tuning)
    heads = [t for t in study.trials if t.params["freeze"] == "head"]
    assert len({t.params["lr"] for t in heads}) == len(heads)


def test_without_the_wrapper_fine_tuning_trials_search_lr_and_dropout():
    """The control: the same study with TPE alone settles nothing (so the test above can fail)."""
    study = run_study(optuna.samplers.TPESampler(seed=0, n_startup_trials=40), SPACE, head_trials=4, n=30)
    tuning = [t for t in study.trials if t.params["freeze"] == "last_blocks"]
    assert len({t.params["lr"] for t in tuning}) == len(tuning)


def test_nothing_is_settled_before_a_head_trial_completes():
    study = run_study(HeadSettledSampler(optuna.samplers.RandomSampler(seed=1)), SPACE, head_trials=0, n=20)
    first_head = min((t.number for t in study.trials if t.params["freeze"] == "head"), default=20)
    early = [t for t in study.trials if t.number < first_head]
    assert len({t.params["lr"] for t in early}) == len(early)


def test_a_settled_value_outside_the_fine_tuning_range_is_left_to_the_sampler():
    # Full fine-tuning here allows only lr 1e-5..5e-5: the head's lr (>= 1e-4) cannot be taken.
    text = SPACE.replace("{type: float, low: 1.0e-4, high: 1.0e-2, log: true, when: {freeze: last_blocks}}",
                         "{type: float, low: 1.0e-5, high: 5.0e-5, log: true, when: {freeze: last_blocks}}")
    study = run_study(HeadSettledSampler(optuna.samplers.RandomSampler(seed=0)), text, head_trials=3, n=20)
    tuning = [t for t in study.trials if t.params["freeze"] == "last_blocks"]
    assert tuning and all(1e-5 <= t.params["lr"] <= 5e-5 for t in tuning)
    assert all(t.params["dropout"] == best_head_before(study, t.number).params["dropout"] for t in tuning)


BAD_SPACES = [
    pytest.param("feature_extraction", "--head-trials 2: space 'feature_extraction' has no categorical `freeze` "
                 "with `head` and another choice to settle (freeze choices: none)", id="freeze fixed to head"),
    pytest.param("fine_tuning", "--head-trials 2: space 'fine_tuning' has no categorical `freeze` with `head` "
                 "and another choice to settle (freeze choices: ['last_blocks', 'full'])", id="no head choice"),
]


@pytest.mark.parametrize("space_name, message", BAD_SPACES)
def test_a_space_without_a_head_choice_is_refused(space_name, message):
    with pytest.raises(TunerError) as info:
        check_head_stage(load_space(space_name), 2)
    assert str(info.value) == message
    check_head_stage(load_space(space_name), 0)  # no head stage asked for: any space will do


@pytest.mark.parametrize("value, message", [
    (-1, "--head-trials must be an integer >= 0, got -1"),
    (1.5, "--head-trials must be an integer >= 0, got 1.5"),
    (True, "--head-trials must be an integer >= 0, got True"),
])
def test_bad_head_trials_are_named(value, message):
    with pytest.raises(TunerError) as info:
        config(head_trials=value)
    assert str(info.value) == message


def test_create_with_a_space_without_a_head_choice_fails_and_writes_nothing(tmp_path):
    db = tmp_path / "s.db"
    result = CliRunner().invoke(cli, ["create", "--study", "s", "--storage", f"sqlite:///{db}", "--space",
                                      "fine_tuning", "--data", "digits", "--weights", "none", "--head-trials", "2"])
    assert result.exit_code == 1
    assert result.output == ("Error: --head-trials 2: space 'fine_tuning' has no categorical `freeze` with `head` "
                             "and another choice to settle (freeze choices: ['last_blocks', 'full'])\n")
    assert not db.exists()


def test_the_stage_is_enqueued_after_the_warm_start_recipes():
    space = load_space("default")
    study = create_study(optuna.storages.InMemoryStorage(), "s",
                         StudyConfig(space_name="default", space_text=space.text, data="digits", model="resnet18",
                                     head_trials=2, n_trials=20), note="")
    trials = study.get_trials()
    assert [t.system_attrs["fixed_params"] for t in trials] == [
        {"freeze": "head", "lr": 1e-3, "optimizer": "adamw"},
        {"freeze": "last_blocks", "unfreeze_blocks": 1, "head_init": "probe", "lr": 1e-3, "backbone_lr": 1e-5},
        {"freeze": "full", "head_init": "probe", "lr": 1e-5, "backbone_lr": 1e-5},
        {"freeze": "head"}, {"freeze": "head"},
    ]
    assert [t.user_attrs for t in trials] == [{"warm_start": True}] * 3 + [{"head_stage": True}] * 2
    assert isinstance(study.sampler, HeadSettledSampler)
    short = create_study(optuna.storages.InMemoryStorage(), "s", StudyConfig(
        space_name="default", space_text=space.text, data="digits", model="resnet18", head_trials=5, n_trials=3),
        note="")
    assert [t.system_attrs["fixed_params"] for t in short.get_trials()] == [
        {"freeze": "head", "lr": 1e-3, "optimizer": "adamw"},
        {"freeze": "last_blocks", "unfreeze_blocks": 1, "head_init": "probe", "lr": 1e-3, "backbone_lr": 1e-5},
        {"freeze": "full", "head_init": "probe", "lr": 1e-5, "backbone_lr": 1e-5}]


def test_no_head_stage_leaves_the_sampler_and_the_note_as_before():
    assert not isinstance(sampler_for(config(), 0), HeadSettledSampler)
    space = load_space("default")
    plain = StudyConfig(space_name="default", space_text=space.text, data="digits", model="resnet18")
    assert "Head stage" not in study_note(plain, space, "digits")
    staged = StudyConfig(space_name="default", space_text=space.text, data="digits", model="resnet18", head_trials=3)
    assert ("* **Head stage:** 3 head-only trials after the warm start's recipes; fine-tuning trials then "
            "take `lr` and `dropout` from the best head-only trial\n") in study_note(staged, space, "digits")


def test_a_run_with_a_head_stage_trains_the_stage_then_settles_the_fine_tuning_trials(tmp_path, tiny_space: Path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    result = CliRunner().invoke(cli, [
        "run", "--study", "s", "--storage", url, "--space", str(tiny_space), "--data", "digits", "--weights", "none",
        "--device", "cpu", "--max-epochs", "1", "--n-trials", "6", "--head-trials", "2", "--pruner", "none",
        "--seed", "3",
        "--artifacts", str(tmp_path / "art"), "--quiet"])
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="s", storage=url)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 6
    assert [t.user_attrs.get("head_stage", False) for t in trials[:4]] == [False, False, True, True]
    assert [t.params["freeze"] for t in trials[:4]] == ["head", "last_blocks", "head", "head"]
    assert study.user_attrs["tuner_config"]["head_trials"] == 2
    settled = [t for t in trials[4:] if t.params["freeze"] == "last_blocks"]
    assert settled  # trial 1 is the warm start's last-block recipe, its lr fixed at 1e-3 by the seed
    for trial in settled:
        assert trial.params["lr"] == best_head_before(study, trial.number).params["lr"]


def test_the_stage_trials_are_never_pruned_the_others_are():
    """ASHA judged the stage's head-only trials against fine-tuning trials and pruned them all."""
    pruner = pruner_for(config(pruner="asha", head_trials=2))
    assert isinstance(pruner, StageUnpruned)
    study = optuna.create_study(direction="maximize", pruner=pruner)
    good = study.ask()
    good.report(0.9, 1)
    assert not good.should_prune()  # ASHA records a trial at a rung when it is asked
    study.tell(good, 0.9)
    study.enqueue_trial({"freeze": "head"}, user_attrs={"head_stage": True})
    staged, plain = study.ask(), study.ask()
    for trial in (staged, plain):
        trial.report(0.1, 1)
    assert (staged.should_prune(), plain.should_prune()) == (False, True)
    assert not isinstance(pruner_for(config(pruner="asha")), StageUnpruned)
