"""`tuner report`: matplotlib PNGs of a study (history, learning curves, parallel coordinates, importances) and an index.html."""

from __future__ import annotations

import html
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner.errors import StudyError
from tuner.service import OpenedStudy, all_params, open_artifact_store, publish_report

# Below this many completed trials, parameter importances are mostly noise: the page says so.
FEW_TRIALS = 10
WIDTH, HEIGHT, DPI = 10, 5.5, 100
COMPLETE_COLOR, PRUNED_COLOR, BEST_COLOR = "tab:blue", "0.6", "tab:red"


@dataclass(frozen=True)
class Finished:
    """A finished trial as the plots see it: its value (a pruned one's last reported value) and curve."""

    number: int
    state: TrialState
    value: float | None
    curve: tuple[tuple[int, float], ...]
    params: dict[str, Any]
    stop_reason: str | None

    @classmethod
    def of(cls, trial: FrozenTrial) -> "Finished":
        curve = tuple(sorted((int(k), float(v)) for k, v in trial.intermediate_values.items()))
        value = trial.value if trial.state == TrialState.COMPLETE else (curve[-1][1] if curve else None)
        return cls(trial.number, trial.state, value, curve, all_params(trial), trial.user_attrs.get("stop_reason"))


@dataclass(frozen=True)
class Section:
    title: str
    image: str | None
    note: str


def finished_trials(study: optuna.Study) -> list[Finished]:
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    return [Finished.of(t) for t in trials]


def best_number(trials: Sequence[Finished], maximize: bool) -> int | None:
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    if not complete:
        return None
    return (max if maximize else min)(complete, key=lambda t: t.value).number


def write_report(opened: OpenedStudy, out: str) -> "ReportResult":
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed on a headless node

    study, config, storage, name = opened.study, opened.config, opened.storage, opened.name
    trials = finished_trials(study)
    if not trials:
        raise StudyError(f"study {name!r} has no finished trial yet")
    maximize = config.direction == "maximize"
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    plots: list[tuple[str, str, Callable[[], Any]]] = [
        ("optimization_history", "Optimization history", lambda: history_figure(trials, config.metric, maximize)),
        ("learning_curves", "Learning curves", lambda: curves_figure(trials, config.metric, maximize)),
        ("parallel_coordinate", "Parallel coordinates",
         lambda: parallel_figure(trials, study, config.metric, maximize)),
        ("param_importances", "Parameter importances", lambda: importances_figure(study, config.metric)),
    ]
    # Library warnings (Optuna's experimental notes, matplotlib's layout hints) are not the
    # user's concern; the page states what matters (few trials) itself.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sections = [render(folder, slug, title, make) for slug, title, make in plots]
    index = folder / "index.html"
    index.write_text(page(name, config.metric, study, trials, sections), encoding="utf-8")
    uploaded = upload(study, storage, config.artifacts, [index, *(folder / s.image for s in sections if s.image)])
    return ReportResult(index, uploaded)


@dataclass(frozen=True)
class ReportResult:
    index: Path
    uploaded: int  # files uploaded as study artifacts (optuna-dashboard's "Study Artifacts")


def upload(study: optuna.Study, storage, location: str, files: list[Path]) -> int:
    """The report as study artifacts, replacing the one uploaded before (none without a store)."""
    if not location:
        return 0
    return len(publish_report(study, storage, open_artifact_store(location), files))


def render(folder: Path, slug: str, title: str, make: Callable[[], Any]) -> Section:
    import matplotlib.pyplot as plt

    try:
        figure, note = make()
    except NotAvailable as reason:
        return Section(title, None, f"Not available yet: {reason}")
    path = folder / f"{slug}.png"
    figure.savefig(path, dpi=DPI)
    plt.close(figure)
    return Section(title, path.name, note)


class NotAvailable(Exception):
    """Too few trials for this plot."""


def history_figure(trials: Sequence[Finished], metric: str, maximize: bool):
    """Every finished trial's value and the best so far, drawn as a step line."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    figure, axes = plt.subplots(figsize=(WIDTH, HEIGHT), layout="constrained")
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    pruned = [t for t in trials if t.state == TrialState.PRUNED and t.value is not None]
    if complete:
        steps, best = [], None
        for trial in complete:
            if best is None or (trial.value > best if maximize else trial.value < best):
                best = trial.value
            steps.append((trial.number, best))
        last = max(t.number for t in trials)
        xs, ys = [n for n, _ in steps] + [last], [v for _, v in steps] + [steps[-1][1]]
        axes.plot(xs, ys, drawstyle="steps-post", color=BEST_COLOR, linewidth=2, label="best so far")
        axes.scatter([t.number for t in complete], [t.value for t in complete], color=COMPLETE_COLOR,
                     zorder=3, label=f"complete ({len(complete)})")
    if pruned:
        axes.scatter([t.number for t in pruned], [t.value for t in pruned], facecolors="none",
                     edgecolors=PRUNED_COLOR, marker="o", zorder=3,
                     label=f"pruned ({len(pruned)}), at its last epoch")
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


def parallel_axes(trials: Sequence[Finished], study: optuna.Study) -> list[Axis]:
    """One axis per parameter that took more than one value (fixed ones say nothing here)."""
    distributions: dict[str, Any] = {}
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        distributions.update(trial.distributions)
    axes = []
    for name in sorted({k for t in trials for k in t.params}):
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


def parallel_figure(trials: Sequence[Finished], study: optuna.Study, metric: str, maximize: bool):
    """Each trial a line across its parameters and value, coloured by the value; the best bold."""
    import matplotlib.pyplot as plt
    from matplotlib import cm, colors

    scored = [t for t in trials if t.value is not None]
    axes_list = parallel_axes(scored, study)
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
            axes.text(index + 0.03, y, label, fontsize=8, va="center", ha="left", zorder=5,
                      bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1})
    axes.set_xticks(range(len(every)), [a.name for a in every], rotation=20, ha="right")
    axes.set_yticks([])
    axes.set_ylim(-0.05, 1.05)
    axes.set_xlim(-0.2, len(every) - 0.5)
    for side in ("left", "right", "top"):
        axes.spines[side].set_visible(False)
    axes.set_title(f"Parallel coordinates: {len(scored)} finished trials (dashed: pruned; red: best, "
                   f"trial {best})" if best is not None else f"Parallel coordinates: {len(scored)} finished trials")
    figure.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), ax=axes, label=metric, pad=0.01)
    return figure, ""


# Parameter importances need two completed trials at least (importances_figure checks first).
MIN_COMPLETED = 2


def too_few_trials(exc: Exception, study: optuna.Study) -> bool:
    """Whether an importance error means the study has too few (or too uniform) trials for it yet.

    Decided by the study, not by the error's type: a ValueError or ZeroDivisionError counts
    only while fewer than MIN_COMPLETED trials have completed (with more, it is a real error
    and is raised). fANOVA raises a RuntimeError when every trial has the same value; any
    other RuntimeError is real.
    """
    if isinstance(exc, RuntimeError):
        return "zero total variance" in str(exc)
    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return len(completed) < MIN_COMPLETED


def importances_figure(study: optuna.Study, metric: str,
                       compute: Callable[[optuna.Study], dict] = optuna.importance.get_param_importances):
    """fANOVA importances over the completed trials, with their count and a caveat when few."""
    import matplotlib.pyplot as plt

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < MIN_COMPLETED:
        raise NotAvailable(f"needs at least {MIN_COMPLETED} completed trials, has {len(complete)}")
    try:
        importances = compute(study)
    except (ValueError, RuntimeError, ZeroDivisionError) as exc:
        if not too_few_trials(exc, study):
            raise  # a real error (a broken study, matplotlib, a bug) must not read as "come back later"
        raise NotAvailable(str(exc)) from None
    if not importances:
        raise NotAvailable("no parameter varies across the completed trials")
    count = f"{len(complete)} completed trial{'s' if len(complete) != 1 else ''}"
    note = f"Computed from {count}."
    if len(complete) < FEW_TRIALS:
        note += f" With fewer than {FEW_TRIALS} completed trials these importances are mostly noise."
    names = list(importances)[::-1]
    figure, axes = plt.subplots(figsize=(WIDTH, max(3.0, 0.45 * len(names) + 1.5)), layout="constrained")
    axes.barh(names, [importances[n] for n in names], color=COMPLETE_COLOR)
    for y, name in enumerate(names):
        axes.text(importances[name], y, f" {importances[name]:.2f}", va="center", fontsize=9)
    axes.set_xlabel(f"importance for {metric} (fANOVA)")
    axes.set_xlim(0, max(importances.values()) * 1.15 or 1)
    title = f"Parameter importances from {count}"
    if len(complete) < FEW_TRIALS:
        title += f" (fewer than {FEW_TRIALS}: mostly noise)"
    axes.set_title(title)
    return figure, note


def page(name: str, metric: str, study: optuna.Study, trials: Sequence[Finished], sections: list[Section]) -> str:
    states: dict[str, int] = {}
    for trial in study.get_trials(deepcopy=False):
        states[trial.state.name] = states.get(trial.state.name, 0) + 1
    counts = ", ".join(f"{k.lower()} {v}" for k, v in sorted(states.items()))
    try:
        best = f"best {html.escape(metric)} {study.best_value:.4f} (trial {study.best_trial.number})"
    except ValueError:
        best = "no completed trial yet"
    body = []
    for section in sections:
        body.append(f"<h2>{html.escape(section.title)}</h2>")
        if section.image:
            body.append(f'<img src="{section.image}" alt="{html.escape(section.title)}" width="900">')
        if section.note:
            body.append(f"<p>{html.escape(section.note)}</p>")
    return (
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
        f"<title>tuner report: {html.escape(name)}</title></head>\n<body>\n"
        f"<h1>Study {html.escape(name)}</h1>\n<p>Trials: {counts}. {best}.</p>\n" + "\n".join(body)
        + "\n</body></html>\n"
    )
