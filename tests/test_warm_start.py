"""The warm start's recipes, sampled around (the default) or completed with the seed's advice (--recipes complete)."""

from __future__ import annotations

import optuna
import pytest
from click.testing import CliRunner
from optuna.trial import TrialState

from tuner.cli import cli
from tuner.config import StudyConfig
from tuner.errors import TunerError
from tuner.search._warm_start import SEED_ADVICE, WARM_START, complete_recipe, warm_start_params
from tuner.space._space import load_space
from tuner.training import check_space

def active_params(space, params: dict) -> set[str]:
    """The sampled (not fixed) parameters that are active under `params`, as the sampler walks the space."""
    values = {"task": "single_label"}
    active = set()
    for name in space.params:
        branch = space.active_branch(name, {**values, **params})
        if branch is None:
            continue
        if branch.fixed:
            values[name] = branch.value
        else:
            active.add(name)
            values[name] = params.get(name)
    return active


@pytest.mark.parametrize("space_name", ["default", "fine_tuning"])
def test_a_completed_recipe_gives_every_active_parameter_of_the_space(space_name):
    space = load_space(space_name)
    recipes = warm_start_params(space, complete=True)
    assert recipes
    for params in recipes:
        assert set(params) == active_params(space, params), params


def test_what_a_space_cannot_express_of_the_advice_is_left_to_the_sampler():
    # feature_extraction offers 5-10 epochs and cosine or step schedules: not the seed's 20 and plateau.
    space = load_space("feature_extraction")
    (head,) = warm_start_params(space, complete=True)
    assert active_params(space, head) - set(head) == {"epochs", "scheduler"}


def test_sampled_recipes_leave_the_rest_to_the_sampler_as_before():
    space = load_space("default")
    head, last, full = warm_start_params(space)
    assert head == {"freeze": "head", "optimizer": "adamw", "lr": 1e-3}
    assert "batch_size" not in last and "dropout" not in full


def test_completed_recipes_take_the_seed_advice_and_keep_their_own_values():
    head, last, full = warm_start_params(load_space("default"), complete=True)
    for params in (head, last, full):
        assert (params["optimizer"], params["weight_decay"], params["batch_size"]) == ("adamw", 1e-4, 32)
        assert (params["scheduler"], params["plateau_factor"], params["plateau_patience"]) == ("plateau", 0.1, 3)
        assert (params["dropout"], params["aug_hflip"], params["aug_rotation"]) == (0.4, 0.5, 0)
    assert (head["epochs"], last["epochs"], full["epochs"]) == (20, 30, 50)
    assert (head["lr"], last["lr"], last["backbone_lr"], full["lr"], full["backbone_lr"]) == (1e-3, 1e-3, 1e-5, 1e-5, 1e-5)
    # Probed where the strategy fine-tunes; head-only trials have no head_init.
    assert (last["head_init"], full["head_init"]) == ("probe", "probe") and "head_init" not in head
    # A recipe's own value wins over the advice.
    assert complete_recipe({"freeze": "head", "optimizer": "sgd"})["optimizer"] == "sgd"
    assert set(SEED_ADVICE) <= set(complete_recipe(WARM_START[0]))


def test_completed_recipes_pass_the_space_check_in_a_real_study():
    space = load_space("default")
    check_space(space)
    study = optuna.create_study(direction="maximize")
    for params in warm_start_params(space, complete=True):
        study.enqueue_trial(params)
    for _ in range(3):
        trial = study.ask()
        params = space.sample(trial, {"task": "single_label"})
        study.tell(trial, 0.5)
        # Every enqueued value was taken as it was: nothing fell back to the sampler.
        assert {k: params[k] for k in trial.params} == trial.params
    assert [t.params["freeze"] for t in study.trials] == ["head", "last_blocks", "full"]


def test_create_with_complete_recipes_stores_the_setting_and_enqueues_them(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    result = CliRunner().invoke(cli, ["create", "--study", "s", "--storage", url, "--data", "digits",
                                      "--weights", "none", "--recipes", "complete"])
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="s", storage=url)
    assert StudyConfig.from_attr(study.user_attrs["tuner_config"]).recipes == "complete"
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert [t.params.get("freeze") or t.system_attrs["fixed_params"]["freeze"] for t in waiting[:3]] == [
        "head", "last_blocks", "full"]
    assert all(t.system_attrs["fixed_params"]["batch_size"] == 32 for t in waiting[:3])


def test_recipes_must_be_one_of_the_choices(tmp_path):
    db = tmp_path / "s.db"
    result = CliRunner().invoke(cli, ["create", "--study", "s", "--storage", f"sqlite:///{db}", "--data", "digits",
                                      "--recipes", "all"])
    assert result.exit_code == 2
    assert "Invalid value for '--recipes': 'all' is not one of 'sampled', 'complete'." in result.output
    assert not db.exists()
    with pytest.raises(TunerError, match=r"^--recipes must be one of sampled, complete, got 'all'$"):
        StudyConfig(space_name="d", space_text="", data="digits", recipes="all")


def test_a_study_stored_before_the_setting_opens_with_sampled_recipes():
    stored = StudyConfig(space_name="d", space_text="", data="digits").to_attr()
    del stored["recipes"]
    assert StudyConfig.from_attr(stored).recipes == "sampled"
