"""Read-only commands on the stored studies: status, best, export, studies, report, dashboard.

status, best, export and studies must not import torch: they stay quick on a login node.
"""

from __future__ import annotations

import json

import click

from tuner.cli._group import closed_when_done
from tuner.cli._options import STUDY_NAME, storage_option, study_option


@click.command()
@click.option("--study", type=STUDY_NAME, metavar="NAME", help="Only this study (default: every study in the storage).")
@storage_option
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True,
              help="A readable summary, or one JSON object for scripts.")
def status(study: str | None, storage: str, fmt: str) -> None:
    """Trials by state, best value, and running trials with host, device, epoch and metric.

    \b
    Examples:
      tuner status
      tuner status --study flowers --format json
    """
    from tuner.cli._render import status_text
    from tuner.service._results import study_status
    from tuner.service._open import require_existing_sqlite

    require_existing_sqlite(storage)
    report = study_status(storage, study)
    click.echo(json.dumps(report, indent=2) if fmt == "json" else status_text(report))


@click.command()
@study_option("The study whose best trial is shown")
@storage_option
@click.option("--format", "fmt", type=click.Choice(["table", "json", "yaml"]), default="table", show_default=True,
              help="yaml prints a search-space file that fixes every parameter to the best value. The table "
                   "shows floats at 4 significant digits; json and yaml keep every digit, so that they rerun "
                   "(or enqueue) exactly the configuration that ran.")
def best(study: str | None, storage: str, fmt: str) -> None:
    """The best trial's value, number and parameters, as they ran (epochs trained).

    A pruned trial's best epoch counts too: when it is the best, its state and best epoch
    are shown, and `epochs` is that best epoch (what `tuner retrain` trains).

    \b
    Examples:
      tuner best --study flowers
      tuner best --study flowers --format yaml > best.yaml   # a space that reruns it: --space best.yaml
    """
    from tuner.cli._render import pruned_text
    from tuner.service._results import best_as_space_yaml, best_summary, epochs_note
    from tuner.service._open import open_for_reading, require_existing_sqlite
    from tuner.text import significant

    require_existing_sqlite(storage)
    opened = closed_when_done(open_for_reading(storage, study, read_only=True))
    summary = best_summary(opened)
    if fmt == "json":
        click.echo(json.dumps(summary, indent=2))
    elif fmt == "yaml":
        click.echo(best_as_space_yaml(opened), nl=False)
    else:
        click.echo(f"study {summary['study']}: best {summary['metric']} = {summary['value']:.4f} "
                   f"(trial {summary['number']}{pruned_text(summary)})")
        for name, value in summary["params"].items():
            shown = (epochs_note(summary["epochs"], summary["best_epoch"]) if name == "epochs" and summary["epochs"]
                     else value)
            click.echo(f"  {name}: {significant(shown)}")


@click.command()
@study_option("The study whose trials are exported")
@storage_option
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True,
              help="One CSV row per trial, or one JSON object.")
@click.option("--out", type=click.Path(dir_okay=False, writable=True), help="File to write (default: stdout).")
def export(study: str | None, storage: str, fmt: str, out: str | None) -> None:
    """Every trial with its params, value, state and user attrs.

    \b
    Examples:
      tuner export --study flowers --out trials.csv
      tuner export --study flowers --format json | jq '.trials[0]'
    """
    from tuner.service._results import export_trials
    from tuner.service._open import open_for_reading, require_existing_sqlite

    require_existing_sqlite(storage)
    text = export_trials(closed_when_done(open_for_reading(storage, study, read_only=True)), fmt)
    if out:
        with open(out, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
        click.echo(f"wrote {out}")
    else:
        click.echo(text, nl=False)


@click.command()
@study_option("The study to report on")
@storage_option
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for the PNGs and index.html.")
def report(study: str | None, storage: str, out: str) -> None:
    """index.html (the best configuration, a sortable table of every trial) and PNG plots of a study.

    The report is also uploaded as study artifacts (optuna-dashboard's Study Artifacts).

    \b
    Examples:
      tuner report --study flowers --out report && xdg-open report/index.html
    """
    from tuner.shipping._report import write_report
    from tuner.service._open import open_for_reading, require_existing_sqlite

    require_existing_sqlite(storage)
    result = write_report(closed_when_done(open_for_reading(storage, study)), out)
    uploaded = (f"; uploaded {result.uploaded} files as study artifacts (optuna-dashboard: Study Artifacts)"
                if result.uploaded else "")
    click.echo(f"wrote {result.index}{uploaded}")


@click.command()
@storage_option
@click.option("--host", default="127.0.0.1", show_default=True, metavar="ADDRESS",
              help="Bind address; localhost unless you mean it.")
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True, metavar="PORT",
              help="TCP port to serve on.")
@click.option("--artifacts", metavar="DIR", help="Artifact store to show (default: the studies' own).")
def dashboard(storage: str, host: str, port: int, artifacts: str | None) -> None:
    """optuna-dashboard on the same storage and artifact store.

    \b
    Examples:
      tuner dashboard                        # http://127.0.0.1:8080/
      tuner dashboard --storage postgresql+psycopg://u:p@db/tuner --port 8081
    """
    from tuner.service._results import check_port, serve_dashboard
    from tuner.service._open import require_existing_sqlite
    from tuner.service._storage import mask_url

    require_existing_sqlite(storage)
    check_port(host, port)
    click.echo(f"optuna-dashboard for {mask_url(storage)} on http://{host}:{port}/")
    serve_dashboard(storage, host, port, artifacts)


@click.command()
@storage_option
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True,
              help="A readable table, or JSON for scripts.")
def studies(storage: str, fmt: str) -> None:
    """Every study in the storage: trials by state, best value, metric, creation time.

    Studies that tuner did not create are listed as such.

    \b
    Examples:
      tuner studies
      tuner studies --storage postgresql://tuner:secret@db/tuner --format json
    """
    from tuner.service._lifecycle import list_studies
    from tuner.cli._render import studies_text
    from tuner.service._open import require_existing_sqlite

    require_existing_sqlite(storage)
    report = list_studies(storage)
    click.echo(json.dumps(report, indent=2) if fmt == "json" else studies_text(report))
