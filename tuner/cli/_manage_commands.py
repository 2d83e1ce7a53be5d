"""Commands that change a study: extend its budget, stop its workers, enqueue a configuration, delete it."""

from __future__ import annotations

import json

import click

from tuner.cli._group import closed_when_done
from tuner.cli._options import STUDY_NAME, storage_option, study_option
from tuner.text import plural


@click.command()
@study_option("The study whose budget changes")
@storage_option
@click.option("--n-trials", type=click.IntRange(min=1), required=True, metavar="N",
              help="The new budget (at least the finished trials).")
def extend(study: str | None, storage: str, n_trials: int) -> None:
    """Raise (or lower) a study's budget; running workers take it up within an epoch.

    \b
    Examples:
      tuner extend --study flowers --n-trials 200
      tuner worker --study flowers        # then run the new trials
    """
    from tuner.service._lifecycle import extend as extend_study
    from tuner.service._open import open_for_reading, require_existing_sqlite

    require_existing_sqlite(storage)
    opened = closed_when_done(open_for_reading(storage, study))
    old, new = extend_study(opened, n_trials)
    click.echo(f"study {opened.name}: budget {old} -> {plural(new, 'trial')}")


@click.command()
@study_option("The study whose workers stop")
@storage_option
def stop(study: str | None, storage: str) -> None:
    """Stop the study's workers: each finishes its epoch, hands its trial back and exits 0.

    \b
    Examples:
      tuner stop --study flowers
      tuner worker --study flowers        # later: resumes the handed-back trials
    """
    from tuner.service._lifecycle import stop as stop_study
    from tuner.service._open import open_for_reading, require_existing_sqlite

    require_existing_sqlite(storage)
    opened = closed_when_done(open_for_reading(storage, study))
    running = stop_study(opened)
    click.echo(f"asked the workers of study {opened.name} to stop ({plural(running, 'trial')} running); "
               f"`tuner worker --study {opened.name}` resumes them later")


@click.command()
@study_option("The study that gets the configuration")
@storage_option
@click.option("--params", "params_file", required=True, metavar="FILE.yaml",
              help="name: value lines, or the output of tuner best --format yaml.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True,
              help="A readable list, or JSON for scripts.")
def enqueue(study: str | None, storage: str, params_file: str, fmt: str) -> None:
    """Queue a configuration (checked against the study's space) for the next free worker.

    \b
    Examples:
      tuner best --study pilot --format yaml > best.yaml
      tuner enqueue --study flowers --params best.yaml
    """
    from tuner.service._lifecycle import enqueue as enqueue_params
    from tuner.service._open import open_for_reading, require_existing_sqlite

    require_existing_sqlite(storage)
    opened = closed_when_done(open_for_reading(storage, study))
    params = enqueue_params(opened, params_file)
    if fmt == "json":
        click.echo(json.dumps({"study": opened.name, "params": params}, indent=2))
        return
    click.echo(f"queued in study {opened.name}:")
    for name, value in params.items():
        click.echo(f"  {name}: {value}")


@click.command()
@click.option("--study", type=STUDY_NAME, required=True, metavar="NAME", help="The study to delete.")
@storage_option
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def delete(study: str, storage: str, yes: bool) -> None:
    """Delete a study, its trials and its artifacts (checkpoints, best weights).

    \b
    Examples:
      tuner delete --study pilot
      tuner delete --study pilot --yes    # no question (scripts)
    """
    from tuner.service._lifecycle import delete as delete_study
    from tuner.service._lifecycle import describe_for_delete
    from tuner.service._open import open_for_reading, require_existing_sqlite

    require_existing_sqlite(storage)
    opened = closed_when_done(open_for_reading(storage, study))
    trials, artifacts = describe_for_delete(opened)
    if not yes:
        where = f" and its artifacts in {artifacts}" if artifacts else ""
        click.confirm(f"Delete study {study} ({plural(trials, 'trial')}){where}?", abort=True)
    removed = delete_study(opened)
    click.echo(f"deleted study {study} ({plural(trials, 'trial')}, {plural(removed, 'artifact file')})")
