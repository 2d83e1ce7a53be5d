"""`tuner report`: an index.html (the best configuration, a sortable table of every trial) and matplotlib PNGs
(history, learning curves, parallel coordinates of the key parameters, importances)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import optuna

from tuner.errors import StudyError
from tuner.search import best_value_of, is_maximized, pruned_note, study_best
from tuner.service import OpenedStudy, open_artifact_store, publish_report
from tuner.shipping._report_data import (
    KEY_PARAMS,
    Finished,
    Importances,
    NotAvailable,
    Row,
    finished_trials,
    key_params,
    measure_importances,
    table_rows,
    varying,
)
from tuner.shipping._report_figures import (
    DPI,
    curves_figure,
    history_figure,
    importances_figure,
    parallel_figure,
)
from tuner.shipping._report_page import Section, Summary, page


@dataclass(frozen=True)
class ReportResult:
    index: Path
    uploaded: int  # files uploaded as study artifacts (optuna-dashboard's "Study Artifacts")


def write_report(opened: OpenedStudy, out: str) -> ReportResult:
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed on a headless node

    study, config, name = opened.study, opened.config, opened.name
    trials = finished_trials(study)
    if not trials:
        raise StudyError(f"study {name!r} has no finished trial yet")
    maximize = config.direction == "maximize"
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    # Library warnings (Optuna's experimental notes, matplotlib's layout hints) are not the
    # user's concern; the page states what matters (few trials) itself.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        importances = measure_importances(study)
        key = key_params(trials, importances, KEY_PARAMS)
        plots: list[tuple[str, str, Callable[[], Any]]] = [
            ("optimization_history", "Optimization history", lambda: history_figure(trials, config.metric, maximize)),
            ("learning_curves", "Learning curves", lambda: curves_figure(trials, config.metric, maximize)),
            ("parallel_coordinate", "Parallel coordinates",
             lambda: (parallel_figure(trials, study, config.metric, maximize, key)[0],
                      key_note(trials, importances, key))),
            ("param_importances", "Parameter importances", lambda: importances_figure(importances, config.metric)),
        ]
        sections = [render(folder, slug, title, make) for slug, title, make in plots]
    rows = table_rows(study)
    index = folder / "index.html"
    columns = (key, key_note(trials, importances, key))
    index.write_text(page(summary(opened, rows), rows, columns, sections), encoding="utf-8")
    images = [folder / s.image for s in sections if s.image]
    uploaded = upload(study, opened.storage, config.artifacts, [index, *images])
    return ReportResult(index, uploaded)


def summary(opened: OpenedStudy, rows: list[Row]) -> Summary:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.state] = counts.get(row.state, 0) + 1
    trial = study_best(opened.study)
    best = next((r for r in rows if trial is not None and r.number == trial.number), None)
    if trial is None or best is None:
        return Summary(opened.name, opened.config.metric, opened.config.direction, counts, None)
    return Summary(opened.name, opened.config.metric, opened.config.direction, counts, best,
                   best_value_of(trial, is_maximized(opened.study)), pruned_note(trial))


def key_note(trials: list[Finished], importances: Importances, shown: list[str]) -> str:
    """Which parameters the table and the parallel coordinates show, and why those."""
    total = len(varying(trials))
    if total <= len(shown):
        return f"Every parameter that varies ({total}), most important first." if importances.values else ""
    if importances.values:
        return f"The {len(shown)} most important of the {total} parameters that vary, most important first."
    return (f"{len(shown)} of the {total} parameters that vary, the ones that usually matter most; "
            "with importances, the most important ones.")


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
    width, height = (round(x) for x in figure.get_size_inches() * DPI)
    plt.close(figure)
    return Section(title, path.name, note, (width, height))
