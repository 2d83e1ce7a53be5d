"""RungPruner: asynchronous successive halving that reads each trial's rung values from its own curve."""

from __future__ import annotations

import math
from typing import Callable

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial

from tuner.config import RUNG_SIGNALS
from tuner.errors import TunerError

# An accuracy is k/n in floating point, and k/n + 1/n can round just below (k+1)/n: a margin
# of exactly one image must keep a trial one image below the cutoff, so it is widened by a
# relative hair far below one image (and a margin of 0 stays exactly Optuna's comparison).
_ROUNDING = 1e-9


class RungPruner(optuna.pruners.BasePruner):
    """ASHA (Optuna's SuccessiveHalvingPruner) with a rung value that one noisy epoch cannot sink.

    Stateless: a trial's value at rung step s is read from its intermediate values ("last":
    the value at s, as Optuna's; "best": the best value at any step <= s), so every trial that
    reached s competes, with no system attrs written. A trial is judged when its last step is
    a rung step, and promoted if it is among the top 1/reduction_factor of the values there,
    or within `margin` of that cutoff: with a few hundred validation images, one image of
    difference is noise, not evidence.
    """

    def __init__(self, min_resource: int = 1, reduction_factor: int = 3, signal: str = "last",
                 margin: float = 0.0, competes: Callable[[FrozenTrial], bool] | None = None) -> None:
        _check_int("min_resource", min_resource, 1)
        _check_int("reduction_factor", reduction_factor, 2)
        if signal not in RUNG_SIGNALS:
            raise TunerError(f"The value of `signal` is {signal!r}, but must be one of {', '.join(RUNG_SIGNALS)}")
        if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0 <= margin < math.inf:
            raise TunerError(f"The value of `margin` is {margin!r}, but must be a number `margin >= 0`")
        self.min_resource, self.reduction_factor = min_resource, reduction_factor
        self.signal, self.margin, self.competes = signal, float(margin), competes

    def rung_steps(self, step: int) -> list[int]:
        """The rung steps up to `step`, lowest first."""
        steps, k = [], 0
        while self.min_resource * self.reduction_factor ** k <= step:
            steps.append(self.min_resource * self.reduction_factor ** k)
            k += 1
        return steps

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        # Judged once per rung, as ASHA: at the step that completes it, not in between.
        if step is None or step not in self.rung_steps(step):
            return False
        value = rung_value(trial, step, self.signal, study.direction)
        if math.isnan(value):
            return True
        competing = [v for v in self.others(study, trial, step) if not math.isnan(v)] + [value]
        return not self.promotable(value, competing, study.direction)

    def others(self, study: optuna.Study, trial: FrozenTrial, step: int) -> list[float]:
        """The rung values at `step` of every other trial (any state) that reached it and competes."""
        return [rung_value(t, step, self.signal, study.direction) for t in study.get_trials(deepcopy=False)
                if t.number != trial.number and step in t.intermediate_values
                and (self.competes is None or self.competes(t))]

    def promotable(self, value: float, competing: list[float], direction: StudyDirection) -> bool:
        """Optuna's _is_trial_promotable_to_next_rung, with the margin."""
        # The first reduction_factor - 1 trials of a rung have no top fraction yet: as in
        # Optuna (which cannot suspend a trial to wait for more), only the best goes on.
        index = max(len(competing) // self.reduction_factor - 1, 0)
        ordered = sorted(competing)
        slack = self.margin * (1 + _ROUNDING)
        if direction == StudyDirection.MAXIMIZE:
            return value + slack >= ordered[-(index + 1)]
        return value - slack <= ordered[index]


def rung_value(trial: FrozenTrial, step: int, signal: str, direction: StudyDirection) -> float:
    """The trial's value at rung `step`: NaN if its value there is (the run diverged), else the
    value there ("last") or the best at any step up to it ("best")."""
    last = trial.intermediate_values[step]
    if signal == "last" or math.isnan(last):
        return last
    seen = [v for s, v in trial.intermediate_values.items() if s <= step and not math.isnan(v)]
    return max(seen) if direction == StudyDirection.MAXIMIZE else min(seen)


def _check_int(name: str, value: object, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise TunerError(f"The value of `{name}` is {value!r}, but must be an integer `{name} >= {least}`")
