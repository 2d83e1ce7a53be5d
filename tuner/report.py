"""`tuner report`: PNG plots through optuna's matplotlib visualization, and an index.html."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Callable

import optuna

from tuner.results import open_readonly
from tuner.study import read_study

PLOTS: tuple[tuple[str, str, str], ...] = (
    ("optimization_history", "Optimization history", "plot_optimization_history"),
    ("param_importances", "Parameter importances", "plot_param_importances"),
    ("learning_curves", "Learning curves (intermediate values per epoch)", "plot_intermediate_values"),
    ("parallel_coordinate", "Parallel coordinates", "plot_parallel_coordinate"),
)


def write_report(storage_url: str, name: str, out: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed on a headless node
    from optuna.visualization import matplotlib as vis

    study, config = read_study(open_readonly(storage_url), name)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    sections = [render_plot(study, folder, slug, title, getattr(vis, func), config.metric)
                for slug, title, func in PLOTS]
    index = folder / "index.html"
    index.write_text(page(name, config.metric, study, sections), encoding="utf-8")
    return index


def render_plot(study: optuna.Study, folder: Path, slug: str, title: str, plot: Callable, metric: str) -> str:
    import matplotlib.pyplot as plt

    heading = f"<h2>{html.escape(title)}</h2>"
    try:
        kwargs = {"target_name": metric} if slug in ("optimization_history", "param_importances",
                                                     "parallel_coordinate") else {}
        axes = plot(study, **kwargs)
    except (ValueError, ZeroDivisionError, RuntimeError) as exc:
        if not too_few_trials(exc):
            raise  # a real error (a broken study, matplotlib, a bug) must not read as "come back later"
        return f"{heading}<p>Not available yet: {html.escape(str(exc))}</p>"
    figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
    figure.set_size_inches(10, 6)
    figure.tight_layout()
    path = folder / f"{slug}.png"
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return f'{heading}<img src="{path.name}" alt="{html.escape(title)}" width="800">'


def too_few_trials(exc: Exception) -> bool:
    """Whether a plot's error means the study has too few (or too uniform) trials for it yet.

    Optuna's importance evaluators raise ValueError for too few completed trials, and fANOVA
    a RuntimeError when every trial has the same value; any other RuntimeError is real.
    """
    if isinstance(exc, RuntimeError):
        return "zero total variance" in str(exc)
    return True


def page(name: str, metric: str, study: optuna.Study, sections: list[str]) -> str:
    states: dict[str, int] = {}
    for trial in study.get_trials(deepcopy=False):
        states[trial.state.name] = states.get(trial.state.name, 0) + 1
    counts = ", ".join(f"{k.lower()} {v}" for k, v in sorted(states.items()))
    try:
        best = f"best {html.escape(metric)} {study.best_value:.4f} (trial {study.best_trial.number})"
    except ValueError:
        best = "no completed trial yet"
    body = "\n".join(sections)
    return (
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
        f"<title>tuner report: {html.escape(name)}</title></head>\n<body>\n"
        f"<h1>Study {html.escape(name)}</h1>\n<p>Trials: {counts}. {best}.</p>\n{body}\n</body></html>\n"
    )
