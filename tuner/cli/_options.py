"""Options shared by several commands (storage, study, heartbeat, worker), and the settings they build."""

from __future__ import annotations

import functools
from typing import Any, Callable

import click
from click.core import ParameterSource

from tuner.config import PRUNERS, RECIPES, RUNG_SIGNALS, SAMPLERS, STORED_OPTIONS, MachineOptions, StudyRequest, default
from tuner.service._storage import DEFAULT_STORAGE, StorageSettings


class StudyName(click.ParamType):
    """--study: any name but an empty one, which would silently mean the automatic name or no study."""

    name = "name"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        if not str(value).strip():
            self.fail("a study name must not be empty", param, ctx)
        return str(value)


STUDY_NAME = StudyName()


def storage_option(f: Callable) -> Callable:
    return click.option(
        "--storage", envvar="TUNER_STORAGE", default=DEFAULT_STORAGE, show_default=True, metavar="URL",
        help="Study storage URL (env TUNER_STORAGE): sqlite:///file.db or postgresql+psycopg://…",
    )(f)


def study_option(what: str) -> Callable[[Callable], Callable]:
    """--study of a command that reads or manages one study: the storage's only study by default."""
    return click.option("--study", type=STUDY_NAME, metavar="NAME",
                        help=f"{what} (default: the storage's only study; name one where it has several).")


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
        click.option("--recipes", type=click.Choice(RECIPES), default=default("recipes"), show_default=True,
                     help="The warm start's recipes: the seed's freeze, optimizer and learning rates with "
                          "every other parameter sampled, or complete with the seed's advice (AdamW, weight "
                          "decay 1e-4, plateau schedule, dropout 0.4, batch 32, a flip, its epochs)."),
        click.option("--prior-weight", type=click.FloatRange(min=0), default=default("prior_weight"), show_default=True,
                     metavar="W",
                     help="Trial n follows the space's priors with chance W/(W+n), else the sampler's "
                          "model (0: ignore them; try 10 where you trust the space's priors)."),
        click.option("--cache-views", type=click.IntRange(min=0), default=default("cache_views"), show_default=True, metavar="K",
                     help="Head-only trials train on cached backbone features of K augmented views "
                          "per image (0: no cache, recompute the backbone every epoch)."),
    ]
    return functools.reduce(lambda acc, opt: opt(acc), reversed(options), search_options(f))


def search_options(f: Callable) -> Callable:
    """The search strategy's stored settings beyond sampler and pruner: start-up, rungs, head stage, freeze-thaw."""
    options = [
        click.option("--startup-trials", type=click.IntRange(min=0), default=default("startup_trials"), show_default=True, metavar="N",
                     help="Trials the model-based sampler draws at random before its model starts (warm-start "
                          "and prior trials count among them)."),
        click.option("--min-resource", type=click.IntRange(min=1), default=default("min_resource"), show_default=True, metavar="EPOCHS",
                     help="ASHA's and Hyperband's first rung: no trial is pruned before this many epochs."),
        click.option("--reduction-factor", type=click.IntRange(min=2), default=default("reduction_factor"), show_default=True, metavar="F",
                     help="ASHA and Hyperband promote one in F trials at each rung; Hyperband runs one bracket "
                          "per power of F in max-epochs / min-resource."),
        click.option("--rung-signal", type=click.Choice(RUNG_SIGNALS), default=default("rung_signal"), show_default=True,
                     help="What ASHA (--pruner asha) compares at a rung: the trial's accuracy at that epoch "
                          "(last, Optuna's), or its best epoch so far (best), which is how a pruned trial counts for the study's "
                          "best. With a small validation set one epoch's dip is noise: best keeps a trial "
                          "whose epoch 1 led but whose epoch 3 lost two images."),
        click.option("--rung-margin", type=click.IntRange(min=0), default=default("rung_margin"), show_default=True,
                     metavar="N",
                     help="ASHA also promotes a trial up to N validation images below a rung's cutoff: on "
                          "300 images one image is 0.0033 of accuracy, noise rather than evidence. E.g. 2 on 300 "
                          "images: 0.66 passes a cutoff of 0.6667 (0: Optuna's cutoff exactly; --pruner asha, "
                          "single-label data)."),
        click.option("--head-trials", type=click.IntRange(min=0), default=default("head_trials"), show_default=True, metavar="N",
                     help="The head stage: N cheap head-only trials (on cached features, about 1% of a "
                          "fine-tuning trial each) after the warm start's recipes; later fine-tuning "
                          "trials take lr and dropout from the best of them (0: no head stage)."),
        click.option("--freeze-thaw/--no-freeze-thaw", default=default("freeze_thaw"), show_default=True,
                     help="ASHA's stopped trials pause with their checkpoint instead of ending, and a worker "
                          "resumes one once it ranks in the top 1/F of its rung (e.g. `--freeze-thaw` on a "
                          "small validation set, where a rung's ranking is noisy)."),
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
    return StorageSettings(url=params["storage"], **{k: params[k] for k in HEARTBEAT if k in params})


def machine_options(params: dict[str, Any]):
    """This machine's options among the command's parameters; the rest keep their defaults."""
    fields = MachineOptions.__dataclass_fields__
    given = {RENAMED.get(k, k): v for k, v in params.items() if RENAMED.get(k, k) in fields}
    return MachineOptions(**{k: v for k, v in given.items() if v is not None or fields[k].default is None})


def study_request(ctx: click.Context, params: dict[str, Any]):
    """The space, the data, and the stored settings the user gave explicitly."""
    explicit = explicit_options(ctx)
    return StudyRequest(space=params["space"], data=params.get("data"),
                        given={k: params[k] for k in STORED_OPTIONS if k in explicit})
