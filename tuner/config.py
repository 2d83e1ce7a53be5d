"""A study's settings and this machine's options: every default written once, as a dataclass field."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from tuner.errors import TunerError

SAMPLERS = ("tpe", "random", "gp", "cmaes")
PRUNERS = ("hyperband", "median", "asha", "none")
# The warm start's recipes: the seed's freeze, optimizer and learning rates with the rest sampled,
# or completed with the seed's advice for every other parameter (tuner.search._warm_start).
RECIPES = ("sampled", "complete")
# ASHA's value of a trial at a rung (tuner.search._rungs): its epoch there, as Optuna's, or its
# best epoch up to there, as the study's best counts a pruned trial (tuner.search._best).
RUNG_SIGNALS = ("last", "best")
# The settings a space file may carry (its `settings:`): they fill what the command line left out.
SPACE_SETTINGS = ("model", "image_size", "weights", "max_epochs")


def at_least(least: int, *, default: int) -> Any:
    """A StudyConfig field for an integer setting of at least `least`: the bound stands by the
    field, and __post_init__ checks every such field, naming its flag."""
    return field(default=default, metadata={"at_least": least})


@dataclass(frozen=True)
class StudyConfig:
    """Everything a worker needs to join a study, stored in the study's user attrs."""

    space_name: str
    space_text: str
    data: str
    model: str = "resnet18"
    weights: str = "imagenet"
    image_size: int = 224
    val_fraction: float = 0.2
    sampler: str = "tpe"
    # ASHA by default: with a budget of a few dozen epochs Hyperband's brackets each wait for
    # their own trials; on bench/transfer.py --quick ASHA gave 0.693 against Hyperband's 0.683.
    pruner: str = "asha"
    n_trials: int = 20
    seed: int = 0
    max_epochs: int | None = None
    metric: str = "val_accuracy"
    direction: str = "maximize"
    # Trials take minutes: a heartbeat every 30 s, and a trial whose worker has been
    # silent for 2 minutes is declared dead and retried.
    heartbeat_interval: int = 30
    grace_period: int = 120
    max_retry: int = 3
    artifacts: str = ""
    warm_start: bool = True
    # "sampled": on bench/transfer.py's suite "complete" reached the baselines sooner but ended
    # 2.7-4.7 validation images behind on four tasks of five (README, the ablation).
    recipes: str = "sampled"
    cache_views: int = 4
    # piBO's beta: trial n follows the space's priors with chance beta / (beta + n); 0 turns
    # the priors off. A space without priors is sampled as before whatever the value.
    # 0 by default: on bench/transfer.py (bench/README.md) the seed's priors cost 0.006 of
    # final accuracy at weight 10 and 0.002 at weight 2 against none.
    prior_weight: float = 0.0
    # The model-based sampler's random start-up trials (TPE's n_startup_trials; warm-start
    # and prior trials count among them), and the multi-fidelity pruners' rungs: the first
    # after min_resource epochs, one in reduction_factor trials promoted at each. Hyperband
    # runs one bracket per power of reduction_factor in max_epochs / min_resource.
    startup_trials: int = at_least(0, default=10)
    min_resource: int = at_least(1, default=1)
    reduction_factor: int = at_least(2, default=3)
    # ASHA's rung value ("last" or "best" epoch so far), and its slack in validation images: a
    # trial this many images below a rung's cutoff is promoted. "last" and 0 are Optuna's own
    # SuccessiveHalvingPruner; with 200-400 validation images, one image is noise. The defaults
    # stay: on bench/transfer.py's suite neither option gained on any task (README, the ablation).
    rung_signal: str = "last"
    rung_margin: int = at_least(0, default=0)
    # The head stage (tuner.search._head_stage): this many head-only trials right after the warm
    # start's recipes; later fine-tuning trials take lr and dropout from the best of them.
    head_trials: int = at_least(0, default=0)
    # Freeze-thaw (tuner.search._freeze_thaw): a trial ASHA stops pauses with its checkpoint, and
    # resumes once it ranks in the top 1/reduction_factor of its rung. Off: on bench/transfer.py's
    # suite it promoted 14 trials and ended 0.3-1.7 validation images behind on three tasks of five.
    freeze_thaw: bool = False
    # Classes, images per class of train and val, content hash (tuner.training._fingerprint); None
    # for studies created before fingerprints, which are then not checked.
    data_fingerprint: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.n_trials < 1:
            raise TunerError(f"--n-trials must be >= 1, got {self.n_trials}")
        if self.max_epochs is not None and self.max_epochs < 1:
            raise TunerError(f"--max-epochs must be >= 1, got {self.max_epochs}")
        if self.sampler not in SAMPLERS:
            raise TunerError(f"--sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")
        if self.pruner not in PRUNERS:
            raise TunerError(f"--pruner must be one of {', '.join(PRUNERS)}, got {self.pruner!r}")
        if self.freeze_thaw and self.pruner != "asha":
            raise TunerError(f"--freeze-thaw pauses and promotes ASHA's trials: it needs --pruner asha, got {self.pruner!r}")
        if self.recipes not in RECIPES:
            raise TunerError(f"--recipes must be one of {', '.join(RECIPES)}, got {self.recipes!r}")
        if not isinstance(self.prior_weight, (int, float)) or not 0 <= self.prior_weight < float("inf"):
            raise TunerError(f"--prior-weight must be a number >= 0, got {self.prior_weight!r}")
        if self.rung_signal not in RUNG_SIGNALS:
            raise TunerError(f"--rung-signal must be one of {', '.join(RUNG_SIGNALS)}, got {self.rung_signal!r}")
        for f in dataclasses.fields(self):
            least, value = f.metadata.get("at_least"), getattr(self, f.name)
            if least is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
                raise TunerError(f"--{f.name.replace('_', '-')} must be an integer >= {least}, got {value!r}")
        self.check_rungs()

    def check_rungs(self) -> None:
        """The rung options against the pruner and the metric (after each field's own check)."""
        if self.pruner != "asha" and (self.rung_signal != "last" or self.rung_margin > 0):
            raise TunerError(f"--rung-signal/--rung-margin apply to --pruner asha, got --pruner {self.pruner}")
        # A new study's metric is set from its data before it is written (service._prepare).
        if self.rung_margin > 0 and self.metric != "val_accuracy":
            raise TunerError(f"--rung-margin counts validation images, so it needs the val_accuracy metric; "
                             f"this study's is {self.metric} (multi-label data): use --rung-margin 0")

    def to_attr(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_attr(cls, value: Mapping[str, Any]) -> "StudyConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in value.items() if k in known})


@dataclass(frozen=True)
class MachineOptions:
    """Settings of this machine and process, which each worker may choose without changing the study."""

    device: str = "auto"
    data: str | None = None  # where this machine finds the study's data (None: as stored)
    artifacts: str | None = None  # None: the study's own store
    num_workers: int | None = None  # DataLoader processes (None: 4 on CUDA, 0 on CPU)
    cache_dir: str | None = None  # the feature cache (None: ~/.cache/tuner/features)
    # torch.compile the trained network. Machine-local like the device: it changes speed,
    # not results (beyond float noise), so workers of one study may differ.
    compile: bool = False
    memory_limit_gib: float | None = None  # decoded images above it are memory-mapped from disk
    timeout: float | None = None  # seconds this worker runs (the running trial finishes)
    quiet: bool = False


# The flags that set a stored setting (StudyConfig field names, and the space file); every
# other flag is machine-local (device, data, artifacts, num workers, cache dir, memory limit, compile).
STORED_OPTIONS = ("space", "model", "image_size", "weights", "val_fraction", "sampler", "pruner", "n_trials",
                  "seed", "max_epochs", "warm_start", "recipes", "cache_views", "heartbeat_interval", "grace_period",
                  "max_retry", "prior_weight", "startup_trials", "min_resource", "reduction_factor",
                  "rung_signal", "rung_margin", "head_trials", "freeze_thaw")


@dataclass(frozen=True)
class StudyRequest:
    """A study as asked for on the command line: the space and data, and only the stored
    settings given explicitly (`given`, by STORED_OPTIONS name). A new study resolves it
    into the StudyConfig that is stored; a continued one only checks `given` against it."""

    space: str = "default"
    data: str | None = None
    given: Mapping[str, Any] = field(default_factory=dict)


def default(name: str) -> Any:
    """The default of a setting, read from the one dataclass field that states it (a flag's:
    `artifacts` and `data` are this machine's options before they are the stored config's)."""
    for holder in (MachineOptions, StudyRequest, StudyConfig):
        found = holder.__dataclass_fields__.get(name)
        if found is not None and found.default is not dataclasses.MISSING:
            return found.default
    raise KeyError(f"no setting {name!r} has a default")


def requested_settings(request: StudyRequest, space_settings: Mapping[str, Any]) -> dict[str, Any]:
    """A new study's settings before anything is derived from its inputs: the field defaults,
    overridden by the space file's settings, overridden by the flags given."""
    defaults = {f.name: f.default for f in dataclasses.fields(StudyConfig) if f.default is not dataclasses.MISSING}
    from_space = {k: v for k, v in space_settings.items() if k in SPACE_SETTINGS and v is not None}
    given = {k: v for k, v in request.given.items() if k in defaults}
    return {**defaults, **from_space, **given}
