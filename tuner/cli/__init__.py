"""The `tuner` command line: a thin click layer that parses, calls the library, and prints."""

from __future__ import annotations

import functools
import json
import os
import sys
from typing import Any, Callable

import click
from click.core import ParameterSource

from tuner.config import PRUNERS, SAMPLERS, STORED_OPTIONS, default
from tuner.errors import TunerError
from tuner.service._storage import DEFAULT_STORAGE
from tuner.text import plural


class TunerGroup(click.Group):
    """A click group that turns library errors into one `Error: ...` line and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TunerError as exc:
            error = click.ClickException(str(exc))
            error.exit_code = exc.exit_code
            raise error from None


@click.group(cls=TunerGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="tuner")
def cli() -> None:
    """Hyperparameter search for transfer learning of image classifiers (torchvision, timm, your own).

    \b
    Typical workflow:
      tuner space show default            # look at the search space
      tuner run --data DIR                # create a study and run trials here
      tuner create --study s --data DIR   # or create it once, then ...
      tuner worker --study s              # ... start workers on many machines
      tuner status                        # watch it (or: tuner dashboard)
      tuner best --study s --format yaml  # take the best configuration
      tuner retrain --study s --out model # train the final model

    Storage defaults to sqlite:///tuner.db (or $TUNER_STORAGE); use
    postgresql+psycopg://user:pass@host/db for workers on many machines.

    \b
    Examples:
      tuner run --data digits --weights none --image-size 32 --n-trials 8 --max-epochs 3
      tuner COMMAND --help                # each command's options and examples
    """


# --- shared options -----------------------------------------------------------------

def storage_option(f: Callable) -> Callable:
    return click.option(
        "--storage", envvar="TUNER_STORAGE", default=DEFAULT_STORAGE, show_default=True, metavar="URL",
        help="Study storage URL (env TUNER_STORAGE): sqlite:///file.db or postgresql+psycopg://…",
    )(f)


def heartbeat_options(f: Callable) -> Callable:
    options = [
        click.option("--heartbeat-interval", type=click.IntRange(min=1), default=default("heartbeat_interval"), show_default=True,
                     metavar="SECONDS",
                     help="Seconds between a running trial's heartbeats."),
        click.option("--grace-period", type=click.IntRange(min=2), default=default("grace_period"), show_default=True,
                     metavar="SECONDS",
                     help="Seconds without a heartbeat before a trial counts as dead and is retried."),
        click.option("--max-retry", type=click.IntRange(min=0), default=default("max_retry"), show_default=True, metavar="N",
                     help="How many times a dead worker's trial is retried from its checkpoint."),
    ]
    return functools.reduce(lambda acc, opt: opt(acc), reversed(options), f)


def study_options(f: Callable) -> Callable:
    """Options that define a study: stored in it, shared by every worker."""
    options = [
        click.option("--space", default=default("space"), show_default=True, metavar="FILE|NAME",
                     help="Search-space file, or the name of a shipped one (tuner space list)."),
        click.option("--data", metavar="DIR|CSV|digits",
                     help="A folder of images (one subfolder per class), a CSV manifest (path,label), "
                          "or 'digits' (built in)."),
        click.option("--model", metavar="NAME|timm:NAME|MODULE:FUNCTION",
                     help="A torchvision model name, efficientnet_lite0, timm:NAME or MODULE:FUNCTION "
                          "(default: from the space file; see tuner models)."),
        click.option("--image-size", type=click.IntRange(min=8), metavar="PIXELS",
                     help="Input size in pixels (default: from the space file)."),
        click.option("--weights", metavar="imagenet|none|PATH",
                     help="Pretrained weights (offline: torchvision's hub cache, Lite0's bundled file, timm's "
                          "Hugging Face cache, FUNCTION(pretrained=True)), random init, or a state dict file "
                          "(default: from the space file, else imagenet)."),
        click.option("--val-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=default("val_fraction"),
                     show_default=True, metavar="FRACTION",
                     help="Share of each class held out for validation when the data has no val/ folder."),
        click.option("--sampler", type=click.Choice(SAMPLERS), default=default("sampler"), show_default=True,
                     help="How trials pick their parameters: multivariate TPE, random, Gaussian process or CMA-ES."),
        click.option("--pruner", type=click.Choice(PRUNERS), default=default("pruner"),
                     show_default=True, help="Stops unpromising trials on the per-epoch validation metric."),
        click.option("--n-trials", type=click.IntRange(min=1), default=default("n_trials"), show_default=True,
                     metavar="N", help="The study's total budget of finished trials, across all workers."),
        click.option("--seed", type=click.IntRange(min=0), default=default("seed"), show_default=True, metavar="N",
                     help="Study seed; each trial's seed derives from it and the trial number."),
        click.option("--max-epochs", type=click.IntRange(min=1), metavar="N", help="Cap on any sampled epoch count, for quick runs "
                     "(default: from the space file, else none)."),
        click.option("--no-warm-start", "warm_start", flag_value=False, default=default("warm_start"),
                     help="Do not enqueue the seed's recommended configurations as the first trials."),
        click.option("--prior-weight", type=click.FloatRange(min=0), default=default("prior_weight"), show_default=True,
                     metavar="W",
                     help="Trial n follows the space's priors with chance W/(W+n), else the sampler's "
                          "model (0: ignore them; try 10 where you trust the space's priors)."),
        click.option("--startup-trials", type=click.IntRange(min=0), default=default("startup_trials"), show_default=True, metavar="N",
                     help="Trials the model-based sampler draws at random before its model starts (warm-start "
                          "and prior trials count among them)."),
        click.option("--min-resource", type=click.IntRange(min=1), default=default("min_resource"), show_default=True, metavar="EPOCHS",
                     help="ASHA's and Hyperband's first rung: no trial is pruned before this many epochs."),
        click.option("--reduction-factor", type=click.IntRange(min=2), default=default("reduction_factor"), show_default=True, metavar="F",
                     help="ASHA and Hyperband promote one in F trials at each rung; Hyperband runs one bracket "
                          "per power of F in max-epochs / min-resource."),
        click.option("--head-trials", type=click.IntRange(min=0), default=default("head_trials"), show_default=True, metavar="N",
                     help="The head stage: N cheap head-only trials (on cached features, about 1% of a "
                          "fine-tuning trial each) after the warm start's recipes; later fine-tuning "
                          "trials take lr and dropout from the best of them (0: no head stage)."),
        click.option("--cache-views", type=click.IntRange(min=0), default=default("cache_views"), show_default=True, metavar="K",
                     help="Head-only trials train on cached backbone features of K augmented views "
                          "per image (0: no cache, recompute the backbone every epoch)."),
    ]
    return functools.reduce(lambda acc, opt: opt(acc), reversed(options), f)


def worker_options(f: Callable) -> Callable:
    """Machine-local options: each worker may choose its own."""
    options = [
        click.option("--device", default=default("device"), show_default=True, metavar="auto|cpu|cuda|cuda:N|mps",
                     help="auto picks CUDA, then MPS, then CPU."),
        click.option("--num-workers", type=click.IntRange(min=0), metavar="N",
                     help="DataLoader worker processes (default: 4 on CUDA, 0 on CPU)."),
        click.option("--timeout", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
                     help="Stop this worker after so many seconds (the running trial finishes)."),
        click.option("--artifacts", metavar="DIR",
                     help="Checkpoint/weights store (default: beside the SQLite file; must be shared "
                          "by all workers of a PostgreSQL study)."),
        click.option("--cache-dir", metavar="DIR",
                     help="Feature cache folder on this machine (default: ~/.cache/tuner/features)."),
        click.option("--compile", "compile_model", is_flag=True,
                     help="torch.compile the trained network: the first epoch is slower while it compiles "
                          "(tens of seconds; later trials reuse it), steps are faster after. Mainly worth it on "
                          "CUDA with bigger models; on CPU it needs a C compiler."),
        click.option("--memory-limit", "memory_limit_gib", type=click.FloatRange(min=0), metavar="GIB",
                     help="Decoded images (uint8, decoded once) stay in RAM up to this size; a bigger data "
                          "set is memory-mapped from a file beside the SQLite study (else in "
                          "~/.cache/tuner/decoded). Default: half of this machine's RAM."),
        click.option("--quiet", "-q", is_flag=True, help="Only warnings and the final result."),
    ]
    return functools.reduce(lambda acc, opt: opt(acc), reversed(options), f)


def explicit_options(ctx: click.Context) -> set[str]:
    return {name for name in ctx.params if ctx.get_parameter_source(name) != ParameterSource.DEFAULT}


# Click's parameter names that differ from the option objects' field names.
RENAMED = {"compile_model": "compile"}
HEARTBEAT = ("heartbeat_interval", "grace_period", "max_retry")


def storage_settings(params: dict[str, Any]):
    """The storage URL, and the heartbeat flags where the command has them (checked here, at once)."""
    from tuner.service._storage import StorageSettings

    return StorageSettings(url=params["storage"], **{k: params[k] for k in HEARTBEAT if k in params})


def machine_options(params: dict[str, Any]):
    """This machine's options among the command's parameters; the rest keep their defaults."""
    from tuner.config import MachineOptions

    fields = MachineOptions.__dataclass_fields__
    given = {RENAMED.get(k, k): v for k, v in params.items() if RENAMED.get(k, k) in fields}
    return MachineOptions(**{k: v for k, v in given.items() if v is not None or fields[k].default is None})


def study_request(ctx: click.Context, params: dict[str, Any]):
    """The space, the data, and the stored settings the user gave explicitly."""
    from tuner.config import StudyRequest

    explicit = explicit_options(ctx)
    return StudyRequest(space=params["space"], data=params.get("data"),
                        given={k: params[k] for k in STORED_OPTIONS if k in explicit})


def print_summary(summary) -> None:
    click.echo(f"finished {summary.finished}/{plural(summary.n_trials, 'trial')} "
               f"({summary.trials_run} run by this process)")
    if summary.best_value is None:
        click.echo("no finished trial yet")
        return
    click.echo(f"best value {summary.best_value:.4f} (trial {summary.best_number})")
    for name, value in sorted(summary.best_params.items()):
        click.echo(f"  {name}: {value}")


# --- run, create, worker -------------------------------------------------------------

@cli.command()
@click.option("--study", metavar="NAME", help="Study name (default: from the space and data, e.g. default-digits).")
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
    opened = prepare_study(storage_settings(params), params["study"], study_request(ctx, params),
                           machine_options(params))
    verb = "created" if opened.created else "continuing"
    click.echo(f"{verb} study {opened.name} ({plural(opened.config.n_trials, 'trial')}, "
               f"metric {opened.config.metric})")
    summary = Worker(opened).run()
    print_summary(summary)
    if summary.stopped_by_signal:
        sys.exit(130)


@cli.command()
@click.option("--study", required=True, metavar="NAME", help="Name of the new study.")
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

    prepared = prepare_study(storage_settings(params), params["study"], study_request(ctx, params),
                             machine_options(params), create_only=True)
    config = prepared.config
    click.echo(f"created study {prepared.name} in {mask_url(params['storage'])}: "
               f"{config.space_name} space, {config.model}, {plural(config.n_trials, 'trial')}, metric {config.metric}")
    click.echo(f"start workers with: tuner worker --study {prepared.name} --storage URL")


@cli.command()
@click.option("--study", required=True, metavar="NAME", help="The study to join.")
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
    opened = open_for_work(StorageSettings(url=params["storage"]), params["study"], machine_options(params),
                           seed_of=sampler_seed_for_worker)
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


# --- watch and use results -----------------------------------------------------------

@cli.command()
@click.option("--study", metavar="NAME", help="Only this study (default: every study in the storage).")
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


@cli.command()
@click.option("--study", required=True, metavar="NAME", help="The study whose best trial is shown.")
@storage_option
@click.option("--format", "fmt", type=click.Choice(["table", "json", "yaml"]), default="table", show_default=True,
              help="yaml prints a search-space file that fixes every parameter to the best value.")
def best(study: str, storage: str, fmt: str) -> None:
    """The best trial's value, number and parameters, as they ran (epochs trained).

    \b
    Examples:
      tuner best --study flowers
      tuner best --study flowers --format yaml > best.yaml   # a space that reruns it: --space best.yaml
    """
    from tuner.service._results import best_as_space_yaml, best_summary, epochs_note
    from tuner.service._open import open_for_reading, require_existing_sqlite

    require_existing_sqlite(storage)
    opened = open_for_reading(storage, study)
    summary = best_summary(opened)
    if fmt == "json":
        click.echo(json.dumps(summary, indent=2))
    elif fmt == "yaml":
        click.echo(best_as_space_yaml(opened), nl=False)
    else:
        click.echo(f"study {summary['study']}: best {summary['metric']} = {summary['value']:.4f} "
                   f"(trial {summary['number']})")
        for name, value in summary["params"].items():
            shown = epochs_note(summary["epochs"]) if name == "epochs" and summary["epochs"] else value
            click.echo(f"  {name}: {shown}")


@cli.command()
@click.option("--study", required=True, metavar="NAME", help="The study whose trials are exported.")
@storage_option
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True,
              help="One CSV row per trial, or one JSON object.")
@click.option("--out", type=click.Path(dir_okay=False, writable=True), help="File to write (default: stdout).")
def export(study: str, storage: str, fmt: str, out: str | None) -> None:
    """Every trial with its params, value, state and user attrs.

    \b
    Examples:
      tuner export --study flowers --out trials.csv
      tuner export --study flowers --format json | jq '.trials[0]'
    """
    from tuner.service._results import export_trials
    from tuner.service._open import open_for_reading, require_existing_sqlite

    require_existing_sqlite(storage)
    text = export_trials(open_for_reading(storage, study), fmt)
    if out:
        with open(out, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
        click.echo(f"wrote {out}")
    else:
        click.echo(text, nl=False)


@cli.command()
@click.option("--study", required=True, metavar="NAME", help="The study to report on.")
@storage_option
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for the PNGs and index.html.")
def report(study: str, storage: str, out: str) -> None:
    """PNG plots (history, learning curves, parallel coordinates, importances) and an index.html.

    The report is also uploaded as study artifacts (optuna-dashboard's Study Artifacts).

    \b
    Examples:
      tuner report --study flowers --out report && xdg-open report/index.html
    """
    from tuner.shipping._report import write_report
    from tuner.service._open import open_for_reading, require_existing_sqlite

    require_existing_sqlite(storage)
    result = write_report(open_for_reading(storage, study), out)
    uploaded = (f"; uploaded {result.uploaded} files as study artifacts (optuna-dashboard: Study Artifacts)"
                if result.uploaded else "")
    click.echo(f"wrote {result.index}{uploaded}")


@cli.command()
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


@cli.command()
@click.option("--study", required=True, metavar="NAME", help="The study whose best trial is retrained.")
@storage_option
@click.option("--out", required=True, type=click.Path(file_okay=False), metavar="DIR",
              help="Model folder to write: weights.pt, model.json, README.md.")
@click.option("--epochs", type=click.IntRange(min=1), metavar="N",
              help="Epochs to train (default: the best trial's best epoch), even where the space fixes epochs.")
@click.option("--include-val", is_flag=True,
              help="Train on train + val (the usual last step); the metric shown is then not held out.")
@click.option("--export", "exports", type=click.Choice(["torchscript"]), multiple=True,
              help="Also write model.torchscript.pt, which loads with torch alone.")
@click.option("--device", default=default("device"), show_default=True, metavar="auto|cpu|cuda|cuda:N|mps",
              help="auto picks CUDA, then MPS, then CPU.")
@click.option("--data", metavar="DIR|CSV", help="Where this machine finds the data (default: as stored).")
@click.option("--compile/--no-compile", "compile_model", default=None,
              help="torch.compile the network (default: as the best trial ran).")
@click.option("--cache-dir", metavar="DIR", help="Feature cache folder (default: ~/.cache/tuner/features).")
@click.option("--num-workers", type=click.IntRange(min=0), metavar="N",
              help="DataLoader worker processes (default: 4 on CUDA, 0 on CPU).")
@click.option("--quiet", "-q", is_flag=True, help="Only the final line.")
def retrain(**params: Any) -> None:
    """Train the final model with the best trial's parameters and write a self-describing model folder.

    \b
    Examples:
      tuner retrain --study s --out model                  # best epoch count, train split
      tuner retrain --study s --out model --include-val    # train + val, the usual last step
      tuner retrain --study s --out model --epochs 30 --export torchscript
    """
    from tuner.progress import progress_for
    from tuner.shipping._retrain import RetrainRequest, check_out, retrain as run_retrain
    from tuner.service._open import open_for_reading, require_existing_sqlite

    require_existing_sqlite(params["storage"])
    request = RetrainRequest(out=params["out"], epochs=params["epochs"], include_val=params["include_val"],
                             compile=params["compile_model"], torchscript="torchscript" in params["exports"])
    check_out(request.out)  # a bad --out fails before the study is read
    opened = open_for_reading(params["storage"], params["study"], machine=machine_options(params))
    progress = progress_for(params["quiet"])
    say = (lambda line: None) if params["quiet"] else (lambda line: click.echo(line, err=True))
    with progress.running():
        result = run_retrain(opened, request, progress=progress, say=say)
    doc = result.doc
    files = ", ".join(f for f in ("weights.pt", "model.json", "README.md", doc["torchscript_file"]) if f)
    click.echo(f"trained {doc['model']} for {doc['epochs_run']} epoch{'s' if doc['epochs_run'] != 1 else ''} "
               f"on {doc['train_images']} images: {doc['metric']} = {doc['value']:.4f} ({doc['value_on']}); "
               f"wrote {result.folder} ({files})")


# --- manage studies ------------------------------------------------------------------

@cli.command()
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


@cli.command()
@click.option("--study", required=True, metavar="NAME", help="The study whose budget changes.")
@storage_option
@click.option("--n-trials", type=click.IntRange(min=1), required=True, metavar="N",
              help="The new budget (at least the finished trials).")
def extend(study: str, storage: str, n_trials: int) -> None:
    """Raise (or lower) a study's budget; running workers take it up within an epoch.

    \b
    Examples:
      tuner extend --study flowers --n-trials 200
      tuner worker --study flowers        # then run the new trials
    """
    from tuner.service._lifecycle import extend as extend_study
    from tuner.service._open import open_for_reading, require_existing_sqlite

    require_existing_sqlite(storage)
    old, new = extend_study(open_for_reading(storage, study), n_trials)
    click.echo(f"study {study}: budget {old} -> {plural(new, 'trial')}")


@cli.command()
@click.option("--study", required=True, metavar="NAME", help="The study whose workers stop.")
@storage_option
def stop(study: str, storage: str) -> None:
    """Stop the study's workers: each finishes its epoch, hands its trial back and exits 0.

    \b
    Examples:
      tuner stop --study flowers
      tuner worker --study flowers        # later: resumes the handed-back trials
    """
    from tuner.service._lifecycle import stop as stop_study
    from tuner.service._open import open_for_reading, require_existing_sqlite

    require_existing_sqlite(storage)
    running = stop_study(open_for_reading(storage, study))
    click.echo(f"asked the workers of study {study} to stop ({plural(running, 'trial')} running); "
               f"`tuner worker --study {study}` resumes them later")


@cli.command()
@click.option("--study", required=True, metavar="NAME", help="The study that gets the configuration.")
@storage_option
@click.option("--params", "params_file", required=True, metavar="FILE.yaml",
              help="name: value lines, or the output of tuner best --format yaml.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True,
              help="A readable list, or JSON for scripts.")
def enqueue(study: str, storage: str, params_file: str, fmt: str) -> None:
    """Queue a configuration (checked against the study's space) for the next free worker.

    \b
    Examples:
      tuner best --study pilot --format yaml > best.yaml
      tuner enqueue --study flowers --params best.yaml
    """
    from tuner.service._lifecycle import enqueue as enqueue_params
    from tuner.service._open import open_for_reading, require_existing_sqlite

    require_existing_sqlite(storage)
    params = enqueue_params(open_for_reading(storage, study), params_file)
    if fmt == "json":
        click.echo(json.dumps({"study": study, "params": params}, indent=2))
        return
    click.echo(f"queued in study {study}:")
    for name, value in params.items():
        click.echo(f"  {name}: {value}")


@cli.command()
@click.option("--study", required=True, metavar="NAME", help="The study to delete.")
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
    opened = open_for_reading(storage, study)
    trials, artifacts = describe_for_delete(opened)
    if not yes:
        where = f" and its artifacts in {artifacts}" if artifacts else ""
        click.confirm(f"Delete study {study} ({plural(trials, 'trial')}){where}?", abort=True)
    removed = delete_study(opened)
    click.echo(f"deleted study {study} ({plural(trials, 'trial')}, {plural(removed, 'artifact file')})")


@cli.command()
@click.option("--model", "folder", required=True, type=click.Path(file_okay=False), metavar="DIR",
              help="A model folder written by tuner retrain.")
@click.argument("images", nargs=-1, required=True, metavar="IMAGE...|FOLDER")
@click.option("--top-k", type=click.IntRange(min=1), default=3, show_default=True, metavar="K",
              help="Classes shown per image (multi-label models show every label above 0.5 instead).")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True,
              help="A readable table, CSV rows (image,rank,class,probability) or JSON.")
@click.option("--device", default=default("device"), show_default=True, metavar="auto|cpu|cuda|cuda:N|mps",
              help="auto picks CUDA, then MPS, then CPU.")
def predict(folder: str, images: tuple[str, ...], top_k: int, fmt: str, device: str) -> None:
    """The most probable classes of each image, with their probabilities.

    \b
    Examples:
      tuner predict --model model photo.jpg other.png
      tuner predict --model model photos/ --top-k 1 --format csv > predictions.csv
    """
    from tuner.shipping._inference import predict as run_predict
    from tuner.progress import progress_for
    from tuner.cli._render import predictions_text

    progress = progress_for(False)
    with progress.running():
        predictions, skipped = run_predict(folder, images, top_k=top_k, device=device, progress=progress)
    if skipped:
        warn_skipped(len(skipped), skipped)
    click.echo(predictions_text(predictions, fmt), nl=False)


def warn_skipped(count: int, files) -> None:
    shown = ", ".join(str(f) for f in list(files)[:3]) + (", ..." if count > 3 else "")
    click.echo(f"Warning: skipped {count} unreadable file{'s' if count != 1 else ''}: {shown}", err=True)


@cli.command("evaluate")
@click.option("--model", "folder", required=True, type=click.Path(file_okay=False), metavar="DIR",
              help="A model folder written by tuner retrain.")
@click.option("--data", required=True, metavar="DIR|CSV",
              help="Labelled images: a folder with one subfolder per class, or a CSV manifest (path,label).")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True,
              help="A readable report, or one JSON object for scripts.")
@click.option("--confusion-matrix", "plot", type=click.Path(dir_okay=False), default="confusion_matrix.png",
              show_default=True, metavar="FILE", help="Where to write the confusion-matrix PNG.")
@click.option("--reliability-diagram", "reliability_plot", type=click.Path(dir_okay=False),
              default="reliability_diagram.png", show_default=True, metavar="FILE",
              help="Where to write the reliability-diagram PNG (calibration before and after the temperature).")
@click.option("--device", default=default("device"), show_default=True, metavar="auto|cpu|cuda|cuda:N|mps",
              help="auto picks CUDA, then MPS, then CPU.")
def evaluate_command(folder: str, data: str, fmt: str, plot: str, reliability_plot: str, device: str) -> None:
    """Accuracy (macro F1 for multi-label models), per-class precision/recall/F1, a confusion matrix, and the
    expected calibration error before and after the model's temperature, with a reliability diagram.

    \b
    Examples:
      tuner evaluate --model model --data path/to/test          # one subfolder per class
      tuner evaluate --model model --data test.csv --format json
    """
    from pathlib import Path

    from tuner.shipping._inference import confusion_png, evaluate_model, reliability_png
    from tuner.progress import progress_for
    from tuner.cli._render import evaluation_text

    progress = progress_for(fmt == "json")
    with progress.running():
        report = evaluate_model(folder, data, device=device, progress=progress)
    if report["skipped"]:
        warn_skipped(report["skipped"], report["skipped_files"])
    written = confusion_png(report, Path(plot))
    diagram = reliability_png(report, Path(reliability_plot))
    if fmt == "json":
        click.echo(json.dumps({**report, "confusion_matrix_png": str(written),
                               "reliability_diagram_png": str(diagram)}, indent=2))
    else:
        click.echo(evaluation_text(report))
        click.echo(f"wrote {written}, {diagram}")


@cli.command()
@click.argument("pattern", required=False, metavar="[PATTERN]")
def models(pattern: str | None) -> None:
    """List the model names --model takes (optionally only those containing PATTERN).

    torchvision's classifiers, efficientnet_lite0, and timm's models as timm:NAME when timm
    is installed; --model also takes MODULE:FUNCTION, a function of yours that builds one.

    \b
    Examples:
      tuner models resnet
      tuner models timm:convnext
    """
    from tuner.training._models import available_models

    names = [name for name in available_models() if pattern is None or pattern in name]
    for name in names:
        click.echo(name)
    if not names:
        click.echo(f"no model name contains {pattern!r}")


# --- search spaces -------------------------------------------------------------------

@cli.group(cls=TunerGroup)
def space() -> None:
    """Inspect and validate search-space files (search_spaces/*.yaml).

    \b
    Examples:
      tuner space list
      tuner space show default
      tuner space validate my_space.yaml
    """


@space.command("list")
def space_list() -> None:
    """List the shipped search spaces, one line each.

    \b
    Examples:
      tuner space list
    """
    from tuner.space._space import load_space, shipped_spaces

    for path in shipped_spaces():
        first_line = load_space(str(path)).description.split(". ")[0].rstrip(".")
        click.echo(f"{path.stem:<20} {first_line}")


@space.command("validate")
@click.argument("files", nargs=-1, required=True, metavar="FILE|NAME...")
def space_validate(files: tuple[str, ...]) -> None:
    """Check search-space files (paths or shipped names); exit 1 if any is invalid.

    \b
    Examples:
      tuner space validate my_space.yaml
      tuner space validate default fine_tuning
    """
    from tuner.errors import SpaceError
    from tuner.training._hyperparams import check_space
    from tuner.space._space import load_space

    failed = 0
    for ref in files:
        try:
            loaded = load_space(ref)
            check_space(loaded)
        except SpaceError as exc:
            failed += 1
            click.echo(f"Error: {exc}", err=True)
        else:
            click.echo(f"{loaded.source}: OK ({len(loaded.params)} parameters)")
    if failed:
        sys.exit(1)


@space.command("show")
@click.argument("ref", metavar="FILE|NAME")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table",
              show_default=True, help="A readable table, or one JSON object for scripts.")
def space_show(ref: str, fmt: str) -> None:
    """Show a search space: each parameter's branches, ranges and conditions.

    \b
    Examples:
      tuner space show default
      tuner space show my_space.yaml --format json
    """
    from tuner.cli._render import space_table
    from tuner.space._space import load_space

    loaded = load_space(ref)
    if fmt == "json":
        click.echo(json.dumps(loaded.to_json(), indent=2))
    else:
        click.echo(space_table(loaded))


def main() -> None:
    import warnings

    import optuna

    # Heartbeats, grouped TPE and metric names are "experimental" in Optuna; we rely on
    # them on purpose, and the warnings would bury our own output.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # Our worker lines say what each trial did; Optuna's INFO lines would repeat them.
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.showwarning = one_line_warnings(warnings.showwarning)
    cli(prog_name="tuner")


def one_line_warnings(show: Callable) -> Callable:
    """tuner's own warnings (skipped files) as one `Warning: ...` line, without Python's file and source line.

    Installed by main() only: in-process callers (tests, notebooks) keep Python's warnings to catch.
    """
    def shown(message, category, filename, lineno, file=None, line=None) -> None:
        if category.__module__.startswith("tuner."):
            click.echo(f"Warning: {message}", err=True)
        else:
            show(message, category, filename, lineno, file, line)

    return shown
