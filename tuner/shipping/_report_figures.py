"""The report's matplotlib figures: optimization history, learning curves, parallel coordinates, importances."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import optuna
from optuna.trial import TrialState

from tuner.shipping._report_data import FEW_TRIALS, Finished, Importances, NotAvailable, best_number

# 10 x 5.5 inches at 100 dpi: 1000 px wide, shown at that size on the page, where 10-point
# labels read as ~14 px text.
WIDTH, HEIGHT, DPI = 10, 5.5, 100
COMPLETE_COLOR, PRUNED_COLOR, BEST_COLOR = "tab:blue", "0.6", "tab:red"

def history_figure(trials: Sequence[Finished], metric: str, maximize: bool):
    """Every finished trial's value and the best so far, drawn as a step line."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    figure, axes = plt.subplots(figsize=(WIDTH, HEIGHT), layout="constrained")
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    pruned = [t for t in trials if t.state == TrialState.PRUNED and t.value is not None]
    # The best so far counts a pruned trial's best epoch, as the study's best does (tuner.search.best_value_of).
    counted = [t for t in trials if t.counted is not None] or complete
    raised = []  # pruned trials whose best epoch raised the best so far: marked where the line steps
    if counted:
        steps, best = [], None
        for trial in counted:
            value = trial.value if trial.counted is None else trial.counted
            if best is None or (value > best if maximize else value < best):
                best = value
                if trial.state == TrialState.PRUNED:
                    raised.append((trial.number, value))
            steps.append((trial.number, best))
        last = max(t.number for t in trials)
        xs, ys = [n for n, _ in steps] + [last], [v for _, v in steps] + [steps[-1][1]]
        axes.plot(xs, ys, drawstyle="steps-post", color=BEST_COLOR, linewidth=2, label="best so far")
    if complete:
        axes.scatter([t.number for t in complete], [t.value for t in complete], color=COMPLETE_COLOR,
                     zorder=3, label=f"complete ({len(complete)})")
    if pruned:
        axes.scatter([t.number for t in pruned], [t.value for t in pruned], facecolors="none",
                     edgecolors=PRUNED_COLOR, marker="o", zorder=3,
                     label=f"pruned ({len(pruned)}), at its last epoch")
    if raised:
        axes.scatter(*zip(*raised), color=BEST_COLOR, marker="^", zorder=4, label="pruned, at its best epoch")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("trial")
    axes.set_ylabel(metric)
    axes.set_title("Optimization history")
    axes.grid(alpha=0.3)
    axes.legend(loc="best")
    return figure, ""


def curves_figure(trials: Sequence[Finished], metric: str, maximize: bool):
    """The metric per epoch of every trial: pruned ones grey and dashed, early-stopped ones marked."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    with_curves = [t for t in trials if t.curve]
    if not with_curves:
        raise NotAvailable("no trial has reported an epoch")
    best = best_number(trials, maximize)
    figure, axes = plt.subplots(figsize=(WIDTH, HEIGHT), layout="constrained")
    for trial in with_curves:
        epochs, values = zip(*trial.curve)
        if trial.number == best:
            continue  # drawn last, on top
        pruned = trial.state == TrialState.PRUNED
        axes.plot(epochs, values, color=PRUNED_COLOR if pruned else COMPLETE_COLOR, alpha=0.7,
                  linestyle="--" if pruned else "-", linewidth=1.2)
        if pruned:
            axes.plot(epochs[-1], values[-1], marker="x", color=PRUNED_COLOR, markersize=8)
        elif trial.stop_reason == "early_stopped":
            axes.plot(epochs[-1], values[-1], marker="s", color=COMPLETE_COLOR, markersize=6)
    chosen = [t for t in with_curves if t.number == best]
    if chosen:
        epochs, values = zip(*chosen[0].curve)
        axes.plot(epochs, values, color=BEST_COLOR, linewidth=2.5, marker="o", zorder=4)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("epoch")
    axes.set_ylabel(metric)
    axes.set_title("Learning curves (validation metric per epoch)")
    axes.grid(alpha=0.3)
    others = [t for t in with_curves if t.number != best]
    handles = []
    if any(t.state == TrialState.COMPLETE for t in others):
        handles.append(Line2D([], [], color=COMPLETE_COLOR, label="complete"))
    if any(t.state == TrialState.PRUNED for t in others):
        handles.append(Line2D([], [], color=PRUNED_COLOR, linestyle="--", marker="x", label="pruned"))
    if any(t.stop_reason == "early_stopped" and t.state == TrialState.COMPLETE for t in others):
        handles.append(Line2D([], [], color=COMPLETE_COLOR, marker="s", linestyle="none", label="early stopped"))
    if best is not None:
        handles.append(Line2D([], [], color=BEST_COLOR, linewidth=2.5, marker="o", label=f"best (trial {best})"))
    axes.legend(handles=handles, loc="best")
    return figure, ""


@dataclass(frozen=True)
class Axis:
    """One vertical axis of the parallel coordinates: how a value maps to 0..1, and its tick labels."""

    name: str
    position: Callable[[Any], float]
    ticks: tuple[tuple[float, str], ...]


def short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2g}" if value != 0 and (abs(value) < 1e-2 or abs(value) >= 1e4) else f"{value:.3g}"
    return str(value)


def numeric_axis(name: str, values: Sequence[float], log: bool) -> Axis:
    logged = log and min(values) > 0
    scale: Callable[[float], float] = math.log10 if logged else float
    low, high = scale(min(values)), scale(max(values))
    span = high - low

    def position(value: Any) -> float:
        return 0.5 if span == 0 else (scale(value) - low) / span

    if span == 0:
        shown = [min(values)]
    else:
        middle = 10 ** ((low + high) / 2) if logged else (min(values) + max(values)) / 2
        shown = [min(values), middle, max(values)]
    return Axis(name, position, tuple((position(v), short(v)) for v in shown))


def categorical_axis(name: str, choices: Sequence[Any]) -> Axis:
    ordered = list(dict.fromkeys(choices))
    step = 1 / (len(ordered) - 1) if len(ordered) > 1 else 0

    def position(value: Any) -> float:
        return 0.5 if len(ordered) == 1 else ordered.index(value) * step

    return Axis(name, position, tuple((position(c), short(c)) for c in ordered))


def parallel_axes(trials: Sequence[Finished], study: optuna.Study, names: Sequence[str]) -> list[Axis]:
    """One axis per named parameter that took more than one value (fixed ones say nothing here)."""
    distributions: dict[str, Any] = {}
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        distributions.update(trial.distributions)
    axes = []
    for name in names:
        values = [t.params[name] for t in trials if name in t.params]
        if len({repr(v) for v in values}) < 2:
            continue
        distribution = distributions.get(name)
        if isinstance(distribution, optuna.distributions.CategoricalDistribution):
            axes.append(categorical_axis(name, [c for c in distribution.choices if c in values]))
        elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            axes.append(numeric_axis(name, values, bool(getattr(distribution, "log", False))))
        else:
            axes.append(categorical_axis(name, sorted(values, key=repr)))
    return axes


def parallel_figure(trials: Sequence[Finished], study: optuna.Study, metric: str, maximize: bool,
                    names: Sequence[str]):
    """Each trial a line across the named parameters and its value, coloured by the value; the best bold."""
    import matplotlib.pyplot as plt
    from matplotlib import cm, colors

    scored = [t for t in trials if t.value is not None]
    axes_list = parallel_axes(scored, study, names)
    if len(scored) < 2 or not axes_list:
        raise NotAvailable("needs two finished trials whose parameters differ")
    values = [t.value for t in scored]
    value_axis = numeric_axis(metric, values, log=False)
    every = [*axes_list, value_axis]
    norm = colors.Normalize(min(values), max(values) if max(values) > min(values) else min(values) + 1e-9)
    cmap = plt.get_cmap("viridis" if maximize else "viridis_r")
    best = best_number(trials, maximize)
    figure, axes = plt.subplots(figsize=(max(WIDTH, 1.6 * len(every)), HEIGHT), layout="constrained")
    for trial in sorted(scored, key=lambda t: (t.number == best, t.value)):
        ys = [a.position(trial.params[a.name]) if a.name in trial.params else math.nan for a in axes_list]
        ys.append(value_axis.position(trial.value))
        is_best = trial.number == best
        axes.plot(range(len(every)), ys, color=BEST_COLOR if is_best else cmap(norm(trial.value)),
                  linewidth=3 if is_best else 1.4, alpha=1 if is_best else 0.75,
                  linestyle="--" if trial.state == TrialState.PRUNED else "-", zorder=3 if is_best else 2)
    for index, axis in enumerate(every):
        axes.axvline(index, color="0.25", linewidth=1, zorder=1)
        for y, label in axis.ticks:
            axes.text(index + 0.03, y, label, fontsize=9, va="center", ha="left", zorder=5,
                      bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1})
    axes.set_xticks(range(len(every)), [a.name for a in every])
    axes.set_yticks([])
    axes.set_ylim(-0.05, 1.05)
    axes.set_xlim(-0.2, len(every) - 0.5)
    for side in ("left", "right", "top"):
        axes.spines[side].set_visible(False)
    axes.set_title(f"Parallel coordinates: {len(scored)} finished trials (dashed: pruned; red: best, "
                   f"trial {best})" if best is not None else f"Parallel coordinates: {len(scored)} finished trials")
    figure.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), ax=axes, label=metric, pad=0.01)
    return figure, ""


def importances_figure(importances: Importances, metric: str):
    """Optuna's importances (PED-ANOVA) as bars, with their trial count and a caveat when few."""
    import matplotlib.pyplot as plt

    if not importances.values:
        raise NotAvailable(importances.unavailable)
    values, completed = importances.values, importances.completed
    count = f"{completed} completed trial{'s' if completed != 1 else ''}"
    note = f"Computed from {count}."
    if completed < FEW_TRIALS:
        note += f" With fewer than {FEW_TRIALS} completed trials these importances are mostly noise."
    names = list(values)[::-1]
    figure, axes = plt.subplots(figsize=(WIDTH, max(3.0, 0.45 * len(names) + 1.5)), layout="constrained")
    axes.barh(names, [values[n] for n in names], color=COMPLETE_COLOR)
    for y, name in enumerate(names):
        axes.text(values[name], y, f" {values[name]:.2f}", va="center", fontsize=9)
    axes.set_xlabel(f"importance for {metric} (Optuna's PED-ANOVA)")
    axes.set_xlim(0, max(values.values()) * 1.15 or 1)
    title = f"Parameter importances from {count}"
    if completed < FEW_TRIALS:
        title += f" (fewer than {FEW_TRIALS}: mostly noise)"
    axes.set_title(title)
    return figure, note
