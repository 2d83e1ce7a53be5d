"""Commands that run a study: run (create or join, then train here), create, worker."""

from __future__ import annotations

import os
import sys
import textwrap
from typing import Any

import click

from tuner.cli._group import closed_when_done
from tuner.cli._options import (STUDY_NAME, heartbeat_options, machine_options, storage_option, storage_settings,
                                study_options, study_request, worker_options)
from tuner.text import duration, plural, significant


@click.command()
@click.option("--study", type=STUDY_NAME, metavar="NAME", help="Study name (default: from the space and data, e.g. default-digits).")
@storage_option
@study_options
@heartbeat_options
@worker_options
@click.pass_context
def run(ctx: click.Context, **params: Any) -> None:
    """Create the study if absent (or join it), then run trials in this process.

    \b
    Examples:
      # a quick demo on the built-in digits, from EfficientNet-Lite0's bundled ImageNet weights (CPU)
      tuner run --data digits --model efficientnet_lite0 --space feature_extraction --image-size 64 --n-trials 10
      # your images, imagenet weights from the torch hub cache
      tuner run --data path/to/images --n-trials 30
    """
    from tuner.service._prepare import prepare_study
    from tuner.service._worker import Worker

    # Opened once, with the data loaded and checked: the worker takes it as it is.
    opened = closed_when_done(prepare_study(storage_settings(params), params["study"], study_request(ctx, params),
                                            machine_options(params)))
    verb = "created" if opened.created else "continuing"
    click.echo(f"{verb} study {opened.name} ({plural(opened.config.n_trials, 'trial')}, "
               f"metric {opened.config.metric})")
    summary = Worker(opened).run()
    print_summary(summary)
    if summary.stopped_by_signal:
        sys.exit(130)


@click.command()
@click.option("--study", type=STUDY_NAME, required=True, metavar="NAME", help="Name of the new study.")
@storage_option
@study_options
@heartbeat_options
@click.option("--artifacts", metavar="DIR", help="Checkpoint/weights store shared by the workers "
              "(default: beside the SQLite file).")
@click.pass_context
def create(ctx: click.Context, **params: Any) -> None:
    """Create a study that stores its whole config; workers then join with --study alone.

    \b
    Examples:
      tuner create --study flowers --data /shared/flowers --storage postgresql+psycopg://u:p@db/tuner \\
          --artifacts /shared/artifacts --n-trials 100
    """
    from tuner.service._prepare import prepare_study
    from tuner.service._storage import mask_url
    from tuner.service._summary import worker_command

    prepared = closed_when_done(prepare_study(storage_settings(params), params["study"], study_request(ctx, params),
                                              machine_options(params), create_only=True))
    config = prepared.config
    click.echo(f"created study {prepared.name} in {mask_url(params['storage'])}: "
               f"{config.space_name} space, {config.model}, {plural(config.n_trials, 'trial')}, metric {config.metric}")
    click.echo(f"start workers with: {worker_command(prepared.name, params['storage'])}")


@click.command()
@click.option("--study", type=STUDY_NAME, required=True, metavar="NAME", help="The study to join.")
@storage_option
@worker_options
@click.option("--data", metavar="DIR|CSV", help="Where this machine finds the study's data (default: as stored).")
@click.option("--gpus", metavar="all|0,1,3", help="One worker process per GPU (N with --trials-per-gpu), "
              "supervised and restarted on a crash.")
@click.option("--processes", type=click.IntRange(min=1), metavar="N", help="Run N supervised worker processes on --device.")
@click.option("--trials-per-gpu", type=click.IntRange(min=1), metavar="N",
              help="Run N supervised worker processes per GPU (of --gpus, or of --device cuda[:K]), so N "
                   "trials of small models train at once on each GPU.")
def worker(**params: Any) -> None:
    """Join a study with nothing but its name and storage, and run trials until the budget is spent.

    Workers started one by one on a machine share its cores: each trial runs max(1, cores //
    live tuner workers of this machine) torch threads (counted through pid files in
    $TUNER_WORKERS_DIR, default a folder in the temp dir). Set OMP_NUM_THREADS to choose instead.

    \b
    Examples:
      tuner worker --study flowers --storage postgresql+psycopg://u:p@db/tuner
      tuner worker --study flowers --gpus all                # one supervised process per GPU
      tuner worker --study flowers --processes 4 --device cpu
    """
    from tuner.service._open import open_for_work, require_existing_sqlite
    from tuner.service._storage import StorageSettings
    from tuner.service._supervisor import plan_processes, supervise, visible_gpu_count
    from tuner.service._worker import Worker, sampler_seed_for_worker

    require_existing_sqlite(params["storage"])
    if params["gpus"] or params["processes"] or params["trials_per_gpu"]:
        plan = plan_processes(params["gpus"], params["processes"], params["device"], visible_gpu_count(),
                              params["trials_per_gpu"])
        # The children read the URL from the environment: on their command lines `ps`
        # would show its password to every user of the node.
        os.environ["TUNER_STORAGE"] = params["storage"]
        sys.exit(supervise(plan, worker_argv(params)))
    opened = closed_when_done(open_for_work(StorageSettings(url=params["storage"]), params["study"],
                                            machine_options(params), seed_of=sampler_seed_for_worker))
    summary = Worker(opened).run()
    print_summary(summary)
    if summary.stopped_by_signal:
        sys.exit(130)


def worker_argv(params: dict[str, Any]) -> list[str]:
    """The command line of one child worker, without --gpus/--processes/--trials-per-gpu/--device."""
    argv = ["worker", "--study", params["study"]]
    for name in ("num_workers", "timeout", "artifacts", "data", "cache_dir"):
        if params.get(name) is not None:
            argv += [f"--{name.replace('_', '-')}", str(params[name])]
    if params.get("memory_limit_gib") is not None:
        argv += ["--memory-limit", str(params["memory_limit_gib"])]
    if params.get("compile_model"):
        argv.append("--compile")
    if params.get("quiet"):
        argv.append("--quiet")
    return argv


def print_summary(summary) -> None:
    """The closing summary (tuner.service._summary.WorkerSummary): the facts come computed, this prints them."""
    progress = summary.progress
    click.echo(f"finished {progress.finished}/{plural(progress.n_trials, 'trial')} "
               f"({summary.trials_run} run by this process)")
    eta = f", ETA {duration(progress.eta_s)} for the {progress.left} left" if progress.left and progress.eta_s else ""
    click.echo(f"study {summary.study} in {summary.storage}: wall time {duration(summary.wall_s)} here, "
               f"study time {duration(progress.elapsed_s)}{eta}")
    click.echo("trials: " + (", ".join(f"{state} {n}" for state, n in summary.states.items()) or "none"))
    if not summary.top:
        click.echo("no completed trial yet")
    else:
        complete = summary.states.get("complete", 0)
        scope = plural(complete, "completed trial")
        if summary.pruned_counted:  # a pruned trial's best epoch competes too (tuner.search.best_value_of)
            pruned = plural(summary.pruned_counted, "pruned trial")
            scope = f"{complete} completed and {pruned} (each at its best epoch)"
        click.echo(f"top {len(summary.top)} of {scope} by {summary.metric}:")
        for trial in summary.top:
            params = " ".join(f"{name}={significant(value)}" for name, value in trial.params.items())
            line = (f"{trial.value:.4f}  trial {trial.number}" + (f" ({trial.note})" if trial.note else "")
                    + (f": {params}" if params else ""))
            click.echo(textwrap.fill(line, width=100,
                                     initial_indent="  ", subsequent_indent="      ", break_on_hyphens=False))
    click.echo("next:")
    for line in summary.next_commands:
        click.echo(f"  {line}")
    if summary.password_masked:
        click.echo("  (*** stands for the storage's password: put it back, or set TUNER_STORAGE and leave out "
                   "--storage)")
