"""Plain-text rendering of spaces, studies and trials for the CLI."""

from __future__ import annotations

import io
from typing import Any, Iterable, Sequence

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tuner.space._describe import branch_prior, branch_range, branch_when
from tuner.space._space import SearchSpace
from tuner.text import duration


def to_text(table: Table, width: int = 140) -> str:
    """Render a rich table to plain text (no colour) so output is the same in a pipe or a test."""
    buffer = io.StringIO()
    Console(file=buffer, width=width, color_system=None, highlight=False).print(table)
    return buffer.getvalue().rstrip("\n")


def simple_table(title: str | None, headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
    for header in headers:
        table.add_column(header, overflow="fold")
    for row in rows:
        # Escape so that a value like [false, true] is not read as rich markup.
        table.add_row(*(escape(str(cell)) for cell in row))
    return to_text(table)


def space_table(space: SearchSpace) -> str:
    rows = [
        (name, b.type, branch_range(b), branch_when(b), branch_prior(b))
        for name, branches in space.params.items()
        for b in branches
    ]
    settings = ", ".join(f"{k}={v}" for k, v in space.settings.items()) or "none"
    header = f"{space.name} ({space.source}): {space.description}\nsettings: {settings}"
    return header + "\n" + simple_table(None, ("parameter", "type", "range", "when", "prior"), rows)


def status_text(report: dict[str, Any]) -> str:
    blocks = [f"storage: {report['storage']}"]
    if not report["studies"]:
        blocks.append("no studies")
    for study in report["studies"]:
        blocks.append(study_line(study))
        if study["running"]:
            rows = [
                (r["number"], r["host"] or "-", r["device"] or "-", epoch_text(r),
                 "-" if r["last_metric"] is None else f"{r['last_metric']:.4f}", r["started"] or "-",
                 duration(r["elapsed_s"]), duration(r["silent_s"]) + (" STALE?" if r["stale"] else ""))
                for r in study["running"]
            ]
            blocks.append(simple_table(None, ("trial", "host", "device", "epoch", study["metric"], "started",
                                              "elapsed", "last report"), rows))
    return "\n".join(blocks)


def predictions_text(predictions, fmt: str) -> str:
    """predict's output: a table, CSV rows (image,rank,class,probability) or JSON."""
    import csv
    import json

    from tuner.shipping._inference import predictions_rows

    if fmt == "json":
        records = [{"image": p.image, "predictions": [{"class": c, "probability": v} for c, v in p.labels]}
                   for p in predictions]
        return json.dumps(records, indent=2) + "\n"
    rows = list(predictions_rows(predictions))
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(("image", "rank", "class", "probability"))
        writer.writerows((image, rank or "", name, "" if rank == 0 else f"{value:.6f}")
                         for image, rank, name, value in rows)
        return buffer.getvalue()
    shown, previous = [], None
    for image, rank, name, value in rows:
        shown.append((image if image != previous else "", name or "(no label above 0.5)",
                      "" if rank == 0 else f"{value:.4f}"))
        previous = image
    return simple_table(None, ("image", "class", "probability"), shown) + "\n"


def evaluation_text(report: dict[str, Any]) -> str:
    skipped = f" ({report['skipped']} unreadable skipped)" if report["skipped"] else ""
    head = f"{report['metric']} {report['value']:.4f} on {report['images']} images{skipped}"
    rows = [(r["class"], f"{r['precision']:.4f}", f"{r['recall']:.4f}", f"{r['f1']:.4f}", r["support"])
            for r in report["classes"]]
    ece = (f"expected calibration error ({report['ece_bins']} bins): {report['ece_before']:.4f} before, "
           f"{report['ece_after']:.4f} after temperature {report['temperature']}")
    return head + "\n" + simple_table(None, ("class", "precision", "recall", "f1", "support"), rows) + "\n" + ece


def study_line(study: dict[str, Any]) -> str:
    if not study["tuner"]:
        return f"study {study['name']}: not created by tuner [{counts_text(study)}]"
    best = study["best"]
    best_text = "none yet" if best is None else f"{best['value']:.4f} (trial {best['number']}{pruned_text(best)})"
    return (f"study {study['name']}: {study['finished']}/{study['n_trials']} finished "
            f"[{counts_text(study)}]; best {study['metric']} {best_text}")


def pruned_text(best: dict[str, Any]) -> str:
    """`, pruned at epoch 3, best epoch 2` after a pruned best's number (`status`, `best`); `` for a completed one."""
    if best.get("state") != "pruned":
        return ""
    return f", pruned at epoch {best['epochs_run']}, best epoch {best['best_epoch']}"


def counts_text(study: dict[str, Any]) -> str:
    """`complete 2, waiting 1, handed back 1`: the trials of tuner.service._counts.trial_counts, as
    status and studies both show them; FAIL is only what really failed, the rest is counted apart."""
    counts: dict[str, int] = {}
    for state, count in study["states"].items():
        if state != "FAIL":
            counts[state.lower()] = count
            continue
        counts["fail"] = study["failed"]
        counts.update({k.replace("_", " "): study[k] for k in ("handed_back", "over_budget", "retried", "duplicate")})
    return ", ".join(f"{k} {v}" for k, v in counts.items() if v) or "no trials"


def epoch_text(row: dict[str, Any]) -> str:
    if row["epoch"] is None:
        return "-"
    return f"{row['epoch']}/{row['epochs']}" if row.get("epochs") else str(row["epoch"])


def studies_text(report: dict[str, Any]) -> str:
    rows = []
    for study in report["studies"]:
        best = "-" if study["best"] is None else f"{study['best']:.4f}"
        # As status counts: finished trials out of the budget (a foreign study has none).
        finished = f"{study['finished']}/{study['n_trials']}" if study["tuner"] else str(study["finished"])
        rows.append((study["name"], finished, counts_text(study), study["metric"] or "(not tuner's)",
                     best, study["created"] or "-"))
    if not rows:
        return f"storage: {report['storage']}\nno studies"
    table = simple_table(None, ("study", "finished", "states", "metric", "best", "created"), rows)
    return f"storage: {report['storage']}\n{table}"
