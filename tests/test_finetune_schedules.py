"""Probe-then-fine-tune (LP-FT) and gradual unfreezing, on real trials of resnet18 at 16 px."""

from __future__ import annotations

import textwrap

import optuna
import pytest
import torchvision
from optuna.artifacts import FileSystemArtifactStore
from optuna.trial import TrialState

from tuner.service._checkpoints import ArtifactCheckpointer
from tuner.training._data import load_data
from tuner.training._data_config import DataConfig
from tuner.training._data_sources import DataWarning
from tuner.search._objective import make_objective
from tuner.training._settings import TrialSettings
from tuner.space._space import parse_space

optuna.logging.set_verbosity(optuna.logging.WARNING)

SETTINGS = TrialSettings(model="resnet18", weights="none", image_size=16, device="cpu")
HEAD_PARAMS = 512 * 2 + 2  # the new Linear(512, 2) of resnet18


def make_space(body: str):
    text = "params:\n" + textwrap.indent(textwrap.dedent(body), "  ")
    return parse_space(text, source="t.yaml", name="t")


def backbone_size(prefixes: tuple[str, ...]) -> int:
    """Scalar parameters of torchvision's own resnet18 under `prefixes` (independent of our code)."""
    model = torchvision.models.resnet18()
    return sum(p.numel() for n, p in model.named_parameters() if n.startswith(prefixes))


@pytest.fixture
def data(image_folder):
    with pytest.warns(DataWarning):
        return load_data(DataConfig(str(image_folder), 16))


class Interrupted(Exception):
    """Stands for the worker's hand-back (or a kill) right after an epoch's checkpoint."""


def run_one(space, data, settings=SETTINGS, **kwargs) -> optuna.trial.FrozenTrial:
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.NopPruner())
    study.optimize(make_objective(space, data, settings, **kwargs), n_trials=1)
    (trial,) = study.trials
    return trial


def interrupted_then_resumed(tmp_path, space, data, at_epoch: int):
    """Hand the trial back after epoch `at_epoch`'s checkpoint, requeue it, and resume it."""
    checkpointer = ArtifactCheckpointer(FileSystemArtifactStore(str(tmp_path)), "s")

    def hand_back(trial, epoch, epochs, metric):
        if epoch == at_epoch:
            raise Interrupted

    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.NopPruner())
    study.optimize(make_objective(space, data, SETTINGS, checkpointer=checkpointer, on_epoch=hand_back),
                   n_trials=1, catch=(Interrupted,))
    first = study.trials[0]
    assert first.state == TrialState.FAIL
    study.add_trial(optuna.trial.create_trial(state=TrialState.WAITING, params=first.params,
                                              distributions=first.distributions, user_attrs=first.user_attrs))
    study.optimize(make_objective(space, data, SETTINGS, checkpointer=checkpointer), n_trials=1)
    return first, study.trials[1]


# --- probe, then fine-tune -----------------------------------------------------------------

# Full fine-tuning at a learning rate too small to move anything in one epoch: what the
# first epoch's metric shows is the head the trial started from.
STILL_FULL = """\
freeze: {type: fixed, value: full}
head_init: {type: fixed, value: HEAD_INIT}
optimizer: {type: fixed, value: adam}
lr: {type: fixed, value: 1.0e-12}
backbone_lr: {type: fixed, value: 1.0e-12}
epochs: {type: fixed, value: EPOCHS}
batch_size: {type: fixed, value: 16}
"""


def still_full(head_init: str, epochs: int = 1):
    return make_space(STILL_FULL.replace("HEAD_INIT", head_init).replace("EPOCHS", str(epochs)))


def test_a_probed_head_is_trained_on_cached_features_before_fine_tuning(tmp_path, data):
    settings = TrialSettings(model="resnet18", weights="none", image_size=16, device="cpu",
                             cache_dir=str(tmp_path / "cache"))
    probed = run_one(still_full("probe"), data, settings)
    plain = run_one(still_full("random"), data, settings)

    probe = probed.user_attrs["probe"]
    assert (probe["epochs"], probe["trial"]) == (20, probed.number)
    # Dark against bright images: a trained linear head separates them on any backbone's
    # features, a random one does not.
    assert probe["val_metric"] >= 0.85
    assert probed.intermediate_values[1] >= 0.85
    assert plain.intermediate_values[1] <= 0.75
    assert "probe" not in plain.user_attrs
    # The features came from the cache, written once, where head-only trials find them too.
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1
    # The cache counts its own backbone passes (FeatureCache.compute_seconds): none here.
    assert probe["extract_seconds"] == 0


def test_a_probe_without_the_cache_counts_its_feature_extraction(data):
    settings = TrialSettings(model="resnet18", weights="none", image_size=16, device="cpu", cache_views=0)
    probe = run_one(still_full("probe"), data, settings).user_attrs["probe"]
    # Both keys: the head's own seconds as before, and the backbone passes that made its features.
    assert probe["epochs"] == 20 and probe["seconds"] > 0 and probe["extract_seconds"] > 0


def test_a_resumed_probed_trial_does_not_probe_again(tmp_path, data):
    space = make_space(STILL_FULL.replace("HEAD_INIT", "probe").replace("EPOCHS", "2")
                       .replace("1.0e-12", "1.0e-3"))
    first, resumed = interrupted_then_resumed(tmp_path, space, data, at_epoch=1)
    uninterrupted = run_one(space, data)

    assert resumed.user_attrs["resumed_from_epoch"] == 1
    # The probe record is the first attempt's (copied with its user attrs), not a new one.
    assert resumed.user_attrs["probe"]["trial"] == first.number != resumed.number
    # Probing again on resume would retrain the checkpointed head: epoch 2 would differ.
    assert resumed.intermediate_values == uninterrupted.intermediate_values
    assert resumed.user_attrs["history"] == uninterrupted.user_attrs["history"]


def test_head_only_trials_never_probe(data):
    space = make_space(STILL_FULL.replace("value: full", "value: head").replace("HEAD_INIT", "probe")
                       .replace("EPOCHS", "1"))
    assert "probe" not in run_one(space, data).user_attrs


# --- gradual unfreezing ----------------------------------------------------------------------

GRADUAL = """\
freeze: {type: fixed, value: gradual}
unfreeze_every: {type: fixed, value: 2}
optimizer: {type: fixed, value: adam}
lr: {type: fixed, value: 1.0e-3}
backbone_lr: {type: fixed, value: 1.0e-4}
epochs: {type: fixed, value: 5}
batch_size: {type: fixed, value: 16}
patience: {type: fixed, value: 9}
"""

# Trainable parameters per epoch with unfreeze_every 2: the head for epochs 1-2, then
# resnet18's top block (layer4) for 3-4, then layer3 too at epoch 5.
GRADUAL_TRAINABLE = [
    HEAD_PARAMS, HEAD_PARAMS,
    HEAD_PARAMS + backbone_size(("layer4.",)), HEAD_PARAMS + backbone_size(("layer4.",)),
    HEAD_PARAMS + backbone_size(("layer3.", "layer4.")),
]


def test_gradual_unfreezing_adds_a_block_every_unfreeze_every_epochs(data):
    trial = run_one(make_space(GRADUAL), data)

    assert trial.state == TrialState.COMPLETE
    history = trial.user_attrs["history"]
    assert [row["unfrozen_blocks"] for row in history] == [0, 0, 1, 1, 2]
    assert [row["trainable_params"] for row in history] == GRADUAL_TRAINABLE
    assert trial.user_attrs["trainable_params"] == HEAD_PARAMS  # at the start


def test_gradual_unfreezing_goes_past_the_last_block_to_the_whole_backbone(data):
    space = make_space(GRADUAL.replace("value: 2}", "value: 1}").replace("epochs: {type: fixed, value: 5}",
                                                                          "epochs: {type: fixed, value: 7}"))
    history = run_one(space, data).user_attrs["history"]
    everything = HEAD_PARAMS + backbone_size(("",)) - 512 * 1000 - 1000  # resnet18 without its fc
    assert [row["trainable_params"] for row in history][-2:] == [everything, everything]


def test_a_resumed_gradual_trial_continues_the_schedule(tmp_path, data):
    space = make_space(GRADUAL)
    first, resumed = interrupted_then_resumed(tmp_path, space, data, at_epoch=3)
    uninterrupted = run_one(space, data)

    assert [row["unfrozen_blocks"] for row in first.user_attrs["history"]] == [0, 0, 1]
    assert resumed.user_attrs["resumed_from_epoch"] == 3
    assert [row["trainable_params"] for row in resumed.user_attrs["history"]] == GRADUAL_TRAINABLE
    # The same run as without the interruption, to the last bit of every loss.
    assert resumed.user_attrs["history"] == uninterrupted.user_attrs["history"]


def test_the_warm_start_probes_the_head_of_the_fine_tuning_recipes_where_the_space_can():
    from tuner.space._space import load_space
    from tuner.search._warm_start import warm_start_params

    head, last, full = warm_start_params(load_space("default"))
    assert "head_init" not in head  # inactive for head-only trials
    assert (last["head_init"], full["head_init"]) == ("probe", "probe")
    assert all(p["head_init"] == "probe" for p in warm_start_params(load_space("fine_tuning")))
    # A space without head_init gets the seed's recipes unchanged.
    plain = load_space("fine_tuning").text.replace("  head_init:\n    type: categorical\n    choices: [probe, random]\n"
                                                    "    prior: {weights: [3, 1]}\n", "")
    assert "head_init" not in plain
    from tuner.space._space import parse_space

    assert all("head_init" not in p for p in warm_start_params(parse_space(plain, source="f.yaml", name="f")))
