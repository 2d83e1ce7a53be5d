"""The head stage: cheap head-only trials first, then fine-tuning trials take the head's settings from them."""

from __future__ import annotations

from typing import Any, Sequence

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

from tuner.errors import TunerError
from tuner.search._wrapped import WrappedSampler
from tuner.space import SearchSpace

# The head's own settings: what a head-only trial on cached features (about 1% of a
# fine-tuning trial's cost) measures as well as a fine-tuning trial does.
SETTLED = ("lr", "dropout")
HEAD_STAGE_ATTR = "head_stage"
HEAD = {"freeze": "head"}


def check_head_stage(space: SearchSpace, head_trials: int) -> None:
    """--head-trials needs a space whose `freeze` offers both `head` and a fine-tuning strategy."""
    if head_trials == 0:
        return
    choices = [c for b in space.params.get("freeze", ()) if b.type == "categorical" for c in b.choices]
    if "head" not in choices or len(set(choices)) < 2:
        raise TunerError(f"--head-trials {head_trials}: space {space.name!r} has no categorical `freeze` with "
                         f"`head` and another choice to settle (freeze choices: {choices or 'none'})")


def stage_params(head_trials: int) -> list[dict[str, Any]]:
    """The head stage's enqueue params: the strategy fixed, everything else left to the sampler."""
    return [dict(HEAD) for _ in range(head_trials)]


def best_head_trial(study: optuna.Study) -> FrozenTrial | None:
    """The best completed head-only trial so far (any worker's), or None."""
    heads = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
             if t.params.get("freeze") == "head" and t.value is not None]
    if not heads:
        return None
    pick = max if study.direction == optuna.study.StudyDirection.MAXIMIZE else min
    return pick(heads, key=lambda t: t.value)


class StageUnpruned(optuna.pruners.BasePruner):
    """Wraps a pruner: the head stage's trials always finish.

    They are cheap, and only completed ones settle the fine-tuning trials. Judged at ASHA's
    rungs against fine-tuning trials, whose first epochs score higher, nearly all of them
    were pruned after one epoch, and the stage settled on nothing but the warm start's head.
    """

    def __init__(self, base: optuna.pruners.BasePruner) -> None:
        self.base = base

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        return not trial.user_attrs.get(HEAD_STAGE_ATTR) and self.base.prune(study, trial)


class HeadSettledSampler(WrappedSampler):
    """Wraps a sampler: a trial that fine-tunes takes `lr` and `dropout` from the best head-only trial.

    Read from the study at each sampling, not kept: every worker settles on the best head
    trial it can see, and a better head trial finished by another worker is used from the
    next fine-tuning trial on. Until a head-only trial has completed, nothing is settled.
    A settled value that the fine-tuning branch's range cannot hold is left to the sampler.
    """

    def __init__(self, base: BaseSampler, names: Sequence[str] = SETTLED) -> None:
        super().__init__(base)
        self.names = tuple(names)

    def settled(self, study: optuna.Study, freeze: Any) -> dict[str, Any]:
        if freeze in (None, "head"):
            return {}
        best = best_head_trial(study)
        return {} if best is None else {n: best.params[n] for n in self.names if n in best.params}

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        sampled = self.base.sample_relative(study, trial, search_space)
        # Before any suggestion: an enqueued trial's strategy is among its fixed params.
        fixed = trial.system_attrs.get("fixed_params") or {}
        freeze = trial.params.get("freeze", fixed.get("freeze", sampled.get("freeze")))
        for name, value in self.settled(study, freeze).items():
            if name in sampled and _holds(search_space[name], value):
                sampled[name] = value
        return sampled

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        if param_name in self.names:
            value = self.settled(study, trial.params.get("freeze")).get(param_name)
            if value is not None and _holds(param_distribution, value):
                return value
        return self.base.sample_independent(study, trial, param_name, param_distribution)


def _holds(distribution: BaseDistribution, value: Any) -> bool:
    """Whether `value` is one `distribution` can give (its range, and its grid where it has a step)."""
    if isinstance(distribution, CategoricalDistribution):
        return value in distribution.choices
    low, high, step = (getattr(distribution, k, None) for k in ("low", "high", "step"))
    if low is None or not isinstance(value, (int, float)) or not low <= value <= high:
        return False
    return step is None or abs((value - low) / step - round((value - low) / step)) < 1e-9
