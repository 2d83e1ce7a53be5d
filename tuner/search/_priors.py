"""A prior-guided sampler: early trials come from the space file's expert priors, later ones from the model."""

from __future__ import annotations

import hashlib
import math
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.trial import FrozenTrial

from tuner.errors import TunerError
from tuner.search._wrapped import WrappedSampler
from tuner.space import Branch, Prior, SearchSpace, same

# Draws of a truncated normal that may fall outside the range before we clip instead.
_MAX_REJECTIONS = 64


def prior_weight(number: int, beta: float) -> float:
    """The chance that trial `number` is drawn from the prior: beta / (beta + n).

    As in piBO (arXiv 2204.11051) the prior's influence decays like beta/n: trial 0 always
    follows it, and after many trials the model has the last word, so a wrong prior costs
    a few trials, never the study.
    """
    if beta <= 0:
        return 0.0
    return beta / (beta + number)


def sample_prior(branch: Branch, prior: Prior, rng: np.random.Generator) -> Any:
    """One value of `branch` drawn from its prior, in the branch's range and on its grid."""
    if prior.weights:
        p = np.asarray(prior.weights, dtype=float)
        return branch.choices[int(rng.choice(len(p), p=p / p.sum()))]
    log = branch.log
    to_axis = math.log10 if log else float
    low, high, centre = to_axis(branch.low), to_axis(branch.high), to_axis(prior.centre)
    value = _truncated_normal(rng, centre, prior.spread, low, high)
    if log:
        value = 10.0 ** value
    value = min(max(value, branch.low), branch.high)  # float error at the ends of the range
    return _on_grid(branch, value)


def _truncated_normal(rng: np.random.Generator, mean: float, sd: float, low: float, high: float) -> float:
    if low == high:
        return low
    for _ in range(_MAX_REJECTIONS):
        value = rng.normal(mean, sd)
        if low <= value <= high:
            return float(value)
    # Only when the centre sits far outside most of the normal's mass: clip the last draw.
    return float(min(max(value, low), high))


def _on_grid(branch: Branch, value: float) -> Any:
    if branch.type == "int":
        step = branch.step or 1
        stepped = branch.low + round((value - branch.low) / step) * step
        return int(min(max(stepped, branch.low), branch.high - (branch.high - branch.low) % step))
    if branch.step is not None:
        count = math.floor((branch.high - branch.low) / branch.step + 1e-9)
        index = min(max(round((value - branch.low) / branch.step), 0), count)
        return branch.low + index * branch.step
    return float(value)


class PriorGuidedSampler(WrappedSampler):
    """Wraps a sampler (TPE by default): trial n follows the priors with chance beta/(beta+n).

    The choice is made per trial, not per parameter, so a prior trial is one coherent
    expert configuration. It is a pure function of (seed, trial number): every worker of
    a study, with its own sampler object, makes the same choice for the same trial, and no
    state has to be shared through the storage. Parameters without a prior are drawn
    uniformly in a prior trial. All trials, prior or not, feed the wrapped sampler's model.
    """

    def __init__(self, space: SearchSpace, base: BaseSampler, *, beta: float, seed: int | None = None) -> None:
        if not math.isfinite(beta) or beta < 0:
            raise TunerError(f"--prior-weight must be a number >= 0, got {beta!r}")
        super().__init__(base)
        self.space = space
        self.beta = beta
        self.seed = 0 if seed is None else int(seed)
        self.uniform = RandomSampler(seed=seed)

    def follows_prior(self, number: int) -> bool:
        """Whether trial `number` is drawn from the priors (deterministic for a given seed)."""
        draw = self._rng(number, "follow").random()
        return draw < prior_weight(number, self.beta)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        if self.follows_prior(trial.number):
            return {}  # every parameter then comes through sample_independent, below
        return self.base.sample_relative(study, trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        if not self.follows_prior(trial.number):
            return self.base.sample_independent(study, trial, param_name, param_distribution)
        branch = self.branch_for(param_name, param_distribution, trial.params)
        if branch is None or branch.prior is None:
            return self.uniform.sample_independent(study, trial, param_name, param_distribution)
        return sample_prior(branch, branch.prior, self._rng(trial.number, param_name))

    def branch_for(self, name: str, distribution: BaseDistribution, chosen: dict[str, Any]) -> Branch | None:
        """The space's branch this suggestion comes from: the one with this distribution whose
        conditions hold on the values chosen so far (a condition on a fixed value or on the
        data's task cannot be checked here, and does not need to be: such branches differ in
        their distribution)."""
        matching = [b for b in self.space.params.get(name, ()) if not b.fixed and b.distribution() == distribution]
        for branch in matching:
            if all(key not in chosen or any(same(chosen[key], a) for a in allowed) for key, allowed in branch.when):
                return branch
        return matching[0] if matching else None

    def reseed_rng(self) -> None:
        super().reseed_rng()
        self.uniform.reseed_rng()

    def _rng(self, number: int, what: str) -> np.random.Generator:
        digest = hashlib.sha256(f"{self.seed}:{number}:{what}".encode()).digest()
        return np.random.default_rng(int.from_bytes(digest[:8], "little"))
