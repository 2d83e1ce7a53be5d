"""A study's sampler and pruner, built from its stored config and its parsed space."""

from __future__ import annotations

import optuna

from tuner.config import StudyConfig
from tuner.errors import TunerError
from tuner.search._freeze_thaw import PromotedPass
from tuner.search._head_stage import HEAD_STAGE_ATTR, HeadSettledSampler, StageUnpruned
from tuner.search._priors import PriorGuidedSampler
from tuner.search._rungs import RungPruner
from tuner.space import SearchSpace


def epoch_cap(space: SearchSpace, max_epochs: int | None) -> int:
    """The most epochs any trial can run: Hyperband's max_resource."""
    branches = space.params.get("epochs", ())
    highest = max((int(b.high if not b.fixed else b.value) for b in branches), default=10)
    return min(highest, max_epochs) if max_epochs else highest


def make_sampler(config: StudyConfig, space: SearchSpace, seed: int) -> optuna.samplers.BaseSampler:
    """The study's sampler; a space with priors wraps it so early trials follow them."""
    sampler = base_sampler(config, seed)
    if config.sampler != "random" and config.prior_weight > 0 and space.has_priors:
        # Seeded by the study seed, not the worker's: which trials follow the prior is a
        # property of the study, the same whichever worker samples a trial.
        sampler = PriorGuidedSampler(space, sampler, beta=config.prior_weight, seed=config.seed)
    if config.head_trials:
        # Outermost: a settled head setting overrides the prior's draw as well as the model's.
        sampler = HeadSettledSampler(sampler)
    return sampler


def base_sampler(config: StudyConfig, seed: int) -> optuna.samplers.BaseSampler:
    if config.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if config.sampler == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if config.sampler == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    # Conditional spaces need group=True for multivariate TPE; constant_liar keeps
    # parallel workers from all sampling next to the same running trial.
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True,
                                      n_startup_trials=config.startup_trials)


def make_pruner(config: StudyConfig, space: SearchSpace) -> optuna.pruners.BasePruner:
    pruner = base_pruner(config, space)
    if config.head_trials:
        pruner = StageUnpruned(pruner)
    if config.freeze_thaw:
        pruner = PromotedPass(pruner)
    return pruner


def base_pruner(config: StudyConfig, space: SearchSpace) -> optuna.pruners.BasePruner:
    cap = epoch_cap(space, config.max_epochs)
    low, factor = min(config.min_resource, cap), config.reduction_factor
    if config.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=low, max_resource=cap, reduction_factor=factor)
    if config.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)
    if config.pruner == "asha" and (config.rung_signal != "last" or config.rung_margin > 0):
        return RungPruner(low, factor, signal=config.rung_signal, margin=rung_margin(config),
                          competes=_not_head_stage)
    if config.pruner == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=low, reduction_factor=factor)
    return optuna.pruners.NopPruner()


def rung_margin(config: StudyConfig) -> float:
    """--rung-margin's images as a share of the validation set: the accuracy they are worth."""
    if config.rung_margin == 0:
        return 0.0
    # Cannot happen from the command line: every new study stores its fingerprint, and one
    # created before fingerprints keeps its stored margin of 0 (a flag contradicting it is refused).
    images = sum((config.data_fingerprint or {}).get("val_counts", {}).values())
    if images < 1:
        raise TunerError(f"--rung-margin {config.rung_margin}: this study stores no count of its validation "
                         "images to turn images into accuracy (use --rung-margin 0)")
    return config.rung_margin / images


def _not_head_stage(trial: optuna.trial.FrozenTrial) -> bool:
    # StageUnpruned keeps head-stage trials from Optuna's ASHA, so they never had rung values
    # there; read from the curves here, they would compete unless left out.
    return not trial.user_attrs.get(HEAD_STAGE_ATTR)
