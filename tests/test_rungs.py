"""RungPruner: Optuna's ASHA when it judges the last epoch with no margin; the best epoch so far, or a
margin of validation images, keeps the trials that one noisy epoch would have pruned. And the
--rung-signal and --rung-margin flags that build it."""

from __future__ import annotations

import csv
import math
import random

import numpy as np
import optuna
import pytest
from click.testing import CliRunner
from optuna.trial import TrialState, create_trial
from PIL import Image

from tuner.cli import cli
from tuner.config import STORED_OPTIONS, StudyConfig
from tuner.errors import TunerError
from tuner.search._head_stage import HEAD_STAGE_ATTR, StageUnpruned
from tuner.search._rungs import RungPruner
from tuner.search._samplers import make_pruner
from tuner.space import load_space

pytestmark = pytest.mark.filterwarnings("ignore::tuner.training._data_sources.DataWarning")


def study_with(pruner: optuna.pruners.BasePruner, *curves: dict[int, float], direction: str = "maximize",
               user_attrs: dict | None = None) -> optuna.Study:
    """An in-memory study holding one finished trial per curve ({step: value})."""
    study = optuna.create_study(direction=direction, pruner=pruner)
    for curve in curves:
        study.add_trial(create_trial(state=TrialState.PRUNED, intermediate_values=curve,
                                     user_attrs=user_attrs or {}))
    return study


def judged(study: optuna.Study, *values: float) -> list[bool]:
    """A new trial reports `values` at steps 1, 2, ...; what should_prune says after each."""
    trial = study.ask()
    decisions = []
    for step, value in enumerate(values, start=1):
        trial.report(value, step)
        decisions.append(trial.should_prune())
    return decisions


# --- arguments ---------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    ({"min_resource": 0}, "The value of `min_resource` is 0, but must be an integer `min_resource >= 1`"),
    ({"min_resource": 1.5}, "The value of `min_resource` is 1.5, but must be an integer `min_resource >= 1`"),
    ({"min_resource": True}, "The value of `min_resource` is True, but must be an integer `min_resource >= 1`"),
    ({"reduction_factor": 1}, "The value of `reduction_factor` is 1, but must be an integer `reduction_factor >= 2`"),
    ({"reduction_factor": "3"},
     "The value of `reduction_factor` is '3', but must be an integer `reduction_factor >= 2`"),
    ({"signal": "mean"}, "The value of `signal` is 'mean', but must be one of last, best"),
    ({"margin": -0.01}, "The value of `margin` is -0.01, but must be a number `margin >= 0`"),
    ({"margin": math.nan}, "The value of `margin` is nan, but must be a number `margin >= 0`"),
    ({"margin": math.inf}, "The value of `margin` is inf, but must be a number `margin >= 0`"),
    ({"margin": "0.1"}, "The value of `margin` is '0.1', but must be a number `margin >= 0`"),
])
def test_bad_arguments_are_named_with_their_value(kwargs, message):
    with pytest.raises(TunerError) as info:
        RungPruner(**kwargs)
    assert str(info.value) == message


# --- the same decisions as Optuna's ASHA -----------------------------------------------------

def decisions(pruner: optuna.pruners.BasePruner, curves: list[list[float]]) -> list[list[bool]]:
    """Each trial in turn reports its curve, stopping where the pruner says so."""
    study = optuna.create_study(direction="maximize", pruner=pruner)
    made = []
    for curve in curves:
        trial, said = study.ask(), []
        for step, value in enumerate(curve, start=1):
            trial.report(value, step)
            said.append(trial.should_prune())
            if said[-1]:
                break
        study.tell(trial, state=TrialState.PRUNED) if said[-1] else study.tell(trial, curve[-1])
        made.append(said)
    return made


@pytest.mark.parametrize("min_resource, reduction_factor", [(1, 3), (1, 2), (2, 2), (2, 3)])
def test_last_with_no_margin_decides_as_optunas_asha(min_resource, reduction_factor):
    rng = random.Random(min_resource * 10 + reduction_factor)
    # Values on a grid of 20 (ties, as on a small validation set) and curves of different lengths.
    curves = [[rng.randrange(21) / 20 for _ in range(rng.randrange(1, 12))] for _ in range(60)]
    theirs = decisions(optuna.pruners.SuccessiveHalvingPruner(min_resource, reduction_factor), curves)
    ours = decisions(RungPruner(min_resource, reduction_factor), curves)
    assert ours == theirs
    # Both kinds of decision were compared: trials pruned, and trials promoted past a second rung.
    assert any(trial[-1] for trial in theirs)
    assert any(len(trial) > min_resource * reduction_factor for trial in theirs)


def test_a_trial_is_judged_only_at_rung_steps():
    # Rungs at 1, 3, 9; the others reached step 3 far ahead of it.
    study = study_with(RungPruner(1, 3), {1: 0.1, 2: 0.9, 3: 0.9}, {1: 0.1, 2: 0.9, 3: 0.9})
    assert judged(study, 0.5, 0.2, 0.2) == [False, False, True]


# --- best: the running best epoch -------------------------------------------------------------

DIPPED = (0.9, 0.85, 0.78)  # the best first epoch, then two epochs a few images lower
OTHERS = ({1: 0.5, 2: 0.7, 3: 0.8}, {1: 0.5, 2: 0.6, 3: 0.7}, {1: 0.4, 2: 0.5, 3: 0.6})


@pytest.mark.parametrize("signal, pruned_at_3", [("last", True), ("best", False)])
def test_best_keeps_a_trial_whose_later_epoch_dipped(signal, pruned_at_3):
    study = study_with(RungPruner(1, 3, signal=signal), *OTHERS)
    assert judged(study, *DIPPED) == [False, False, pruned_at_3]


def test_best_still_prunes_a_trial_that_never_led():
    study = study_with(RungPruner(1, 3, signal="best"), *OTHERS)
    assert judged(study, 0.6, 0.75, 0.7) == [False, False, True]


@pytest.mark.parametrize("signal, pruned_at_3", [("last", True), ("best", False)])
def test_best_is_the_lowest_when_minimizing(signal, pruned_at_3):
    losses = ({1: 0.6, 2: 0.4, 3: 0.3}, {1: 0.7, 2: 0.5, 3: 0.4}, {1: 0.8, 2: 0.6, 3: 0.5})
    study = study_with(RungPruner(1, 3, signal=signal), *losses, direction="minimize")
    assert judged(study, 0.2, 0.35, 0.4) == [False, False, pruned_at_3]


# --- the margin, in validation images ----------------------------------------------------------

@pytest.mark.parametrize("images", [200, 300, 347])
def test_a_margin_of_one_image_keeps_a_trial_one_image_below_the_cutoff(images):
    # Two others at the rung: the trial must be the best of three, k + 1 images correct.
    for k in range(0, images, 7):
        below = dict(cutoff=(k + 1) / images, trial=k / images)
        kept = judged(study_with(RungPruner(1, 3, margin=1 / images), {1: below["cutoff"]}, {1: 0.0}), below["trial"])
        assert kept == [False], (k, images)
        pruned = judged(study_with(RungPruner(1, 3), {1: below["cutoff"]}, {1: 0.0}), below["trial"])
        assert pruned == [True], (k, images)


def test_a_margin_of_one_image_prunes_a_trial_two_images_below():
    study = study_with(RungPruner(1, 3, margin=1 / 200), {1: 142 / 200}, {1: 0.0})
    assert judged(study, 140 / 200) == [True]


@pytest.mark.parametrize("margin, pruned", [(0.0, True), (0.02, False)])
def test_the_margin_when_minimizing(margin, pruned):
    study = study_with(RungPruner(1, 3, margin=margin), {1: 0.30}, {1: 0.9}, direction="minimize")
    assert judged(study, 0.31) == [pruned]


# --- NaN, and who competes -------------------------------------------------------------------

def test_a_nan_at_a_rung_is_pruned_even_alone():
    assert judged(study_with(RungPruner(1, 3)), math.nan) == [True]
    assert judged(study_with(RungPruner(1, 3, signal="best")), 0.9, 0.9, math.nan) == [False, False, True]


def test_other_trials_nan_values_do_not_compete():
    # As in Optuna, which records no rung value for a trial its NaN pruned: one in three of
    # the six values would let 0.8 through, but of the two real ones only the best goes on.
    study = study_with(RungPruner(1, 3), *[{1: math.nan}] * 4, {1: 0.9})
    assert judged(study, 0.8) == [True]
    assert judged(study_with(RungPruner(1, 3), {1: math.nan}, {1: math.nan}), 0.4) == [False]


@pytest.mark.parametrize("competes, pruned", [(None, True), (lambda t: not t.user_attrs.get("head"), False)])
def test_competes_leaves_other_trials_out(competes, pruned):
    study = study_with(RungPruner(1, 3, competes=competes), {1: 0.9}, {1: 0.8}, user_attrs={"head": True})
    assert judged(study, 0.5) == [pruned]


# --- the study's pruner from its config ---------------------------------------------------------

def config(**kw) -> StudyConfig:
    fingerprint = {"classes": ["a", "b"], "train_counts": {"a": 400, "b": 400}, "val_counts": {"a": 150, "b": 50},
                   "content": "x"}
    return StudyConfig(space_name="default", space_text=load_space("default").text, data="digits",
                       **{"data_fingerprint": fingerprint, **kw})


def test_the_defaults_are_optunas_own_asha():
    pruner = make_pruner(config(), load_space("default"))
    assert type(pruner) is optuna.pruners.SuccessiveHalvingPruner
    assert (pruner._min_resource, pruner._reduction_factor) == (1, 3)


@pytest.mark.parametrize("kw, signal, margin", [
    ({"rung_signal": "best"}, "best", 0.0),
    ({"rung_margin": 2}, "last", 0.01),  # 2 images of 200
    ({"rung_signal": "best", "rung_margin": 1, "reduction_factor": 2}, "best", 0.005),
])
def test_the_rung_options_build_a_rung_pruner(kw, signal, margin):
    pruner = make_pruner(config(**kw), load_space("default"))
    assert isinstance(pruner, RungPruner)
    assert (pruner.signal, pruner.margin) == (signal, margin)
    assert (pruner.min_resource, pruner.reduction_factor) == (1, kw.get("reduction_factor", 3))


def test_head_stage_trials_do_not_compete_at_the_rungs():
    pruner = make_pruner(config(rung_signal="best", head_trials=2), load_space("default"))
    assert isinstance(pruner, StageUnpruned) and isinstance(pruner.base, RungPruner)
    study = study_with(pruner, {1: 0.9}, {1: 0.8}, user_attrs={HEAD_STAGE_ATTR: True})
    assert judged(study, 0.5) == [False]
    study.add_trial(create_trial(state=TrialState.PRUNED, intermediate_values={1: 0.6}))
    assert judged(study, 0.5) == [True]


def test_a_margin_without_a_validation_count_is_refused():
    with pytest.raises(TunerError) as info:
        make_pruner(config(rung_margin=1, data_fingerprint=None), load_space("default"))
    assert str(info.value) == ("--rung-margin 1: this study stores no count of its validation images to turn "
                               "images into accuracy (use --rung-margin 0)")


@pytest.mark.parametrize("kw, message", [
    ({"rung_signal": "mean"}, "--rung-signal must be one of last, best, got 'mean'"),
    ({"rung_margin": -1}, "--rung-margin must be an integer >= 0, got -1"),
    ({"rung_margin": 0.5}, "--rung-margin must be an integer >= 0, got 0.5"),
    ({"rung_signal": "best", "pruner": "hyperband"},
     "--rung-signal/--rung-margin apply to --pruner asha, got --pruner hyperband"),
    ({"rung_margin": 1, "pruner": "median"}, "--rung-signal/--rung-margin apply to --pruner asha, got --pruner median"),
    ({"rung_margin": 1, "metric": "val_macro_f1"},
     "--rung-margin counts validation images, so it needs the val_accuracy metric; this study's is "
     "val_macro_f1 (multi-label data): use --rung-margin 0"),
])
def test_bad_rung_settings_are_named(kw, message):
    with pytest.raises(TunerError) as info:
        config(**kw)
    assert str(info.value) == message


def test_the_rung_options_are_stored_after_the_reduction_factor():
    names = list(StudyConfig.__dataclass_fields__)
    assert names[names.index("reduction_factor") + 1:][:2] == ["rung_signal", "rung_margin"]
    assert {"rung_signal", "rung_margin"} <= set(STORED_OPTIONS)


# --- the command line: refused before anything is written ----------------------------------------

def multi_label_manifest(folder) -> str:
    folder.mkdir()
    rows = []
    for index in range(12):
        labels = ("a", "b", "a;b")[index % 3]
        Image.fromarray(np.full((12, 12, 3), index * 20, dtype=np.uint8), "RGB").save(folder / f"{index}.png")
        rows.append((f"{index}.png", labels))
    with (folder / "labels.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows([("path", "label"), *rows])
    return str(folder / "labels.csv")


@pytest.mark.parametrize("extra, data, message", [
    (["--rung-signal", "best", "--pruner", "hyperband"], None,
     "Error: --rung-signal/--rung-margin apply to --pruner asha, got --pruner hyperband\n"),
    (["--rung-margin", "2", "--pruner", "none"], None,
     "Error: --rung-signal/--rung-margin apply to --pruner asha, got --pruner none\n"),
    (["--rung-margin", "1"], "multi",
     "Error: --rung-margin counts validation images, so it needs the val_accuracy metric; this study's is "
     "val_macro_f1 (multi-label data): use --rung-margin 0\n"),
])
def test_a_bad_rung_flag_is_refused_before_the_study_is_written(tmp_path, tiny_space, extra, data, message):
    source = multi_label_manifest(tmp_path / "multi") if data else "digits"
    db = tmp_path / "study.db"
    result = CliRunner().invoke(cli, ["create", "--study", "s", "--storage", f"sqlite:///{db}", "--space",
                                      str(tiny_space), "--data", source, "--weights", "none", "--image-size", "16",
                                      *extra])
    assert (result.exit_code, result.output) == (1, message)
    assert not db.exists()


def test_an_unknown_rung_signal_is_refused_by_click():
    result = CliRunner().invoke(cli, ["run", "--rung-signal", "mean"])
    assert result.exit_code == 2
    assert result.stderr.splitlines()[-1] == ("Error: Invalid value for '--rung-signal': 'mean' is not one of "
                                              "'last', 'best'.")


def test_the_flags_are_stored_and_build_the_rung_pruner(tmp_path, tiny_space):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    result = CliRunner().invoke(cli, ["create", "--study", "s", "--storage", url, "--space", str(tiny_space),
                                      "--data", "digits", "--weights", "none", "--image-size", "16",
                                      "--rung-signal", "best", "--rung-margin", "3"])
    assert result.exit_code == 0, result.output
    stored = StudyConfig.from_attr(optuna.load_study(study_name="s", storage=url).user_attrs["tuner_config"])
    assert (stored.rung_signal, stored.rung_margin) == ("best", 3)
    images = sum(stored.data_fingerprint["val_counts"].values())
    pruner = make_pruner(stored, load_space(str(tiny_space)))
    assert isinstance(pruner, RungPruner) and pruner.margin == 3 / images
