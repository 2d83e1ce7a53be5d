"""Studies that carry their own config: create, load, compare, sampler, pruner, warm start, budget."""

from __future__ import annotations

import dataclasses
import datetime
from dataclasses import dataclass
from typing import Any, Mapping

import optuna
from optuna.trial import TrialState

from tuner.errors import StudyError, TunerError
from tuner.search._head_stage import HEAD_STAGE_ATTR, HeadSettledSampler, StageUnpruned, stage_params
from tuner.search._priors import PriorGuidedSampler
from tuner.space._space import SearchSpace, parse_space
from tuner.training._hyperparams import Hyperparams

CONFIG_ATTR = "tuner_config"
CREATED_ATTR = "tuner_created"  # ISO time, UTC: Optuna keeps no creation time of its own
SAMPLERS = ("tpe", "random", "gp", "cmaes")
PRUNERS = ("hyperband", "median", "asha", "none")
# The seed's recommended starting points, tried first unless --no-warm-start.
WARM_START = (
    {"freeze": "head", "optimizer": "adamw", "lr": 1e-3},
    {"freeze": "last_blocks", "unfreeze_blocks": 1, "backbone_lr": 1e-5, "lr": 1e-3},
    {"freeze": "full", "backbone_lr": 1e-5, "lr": 1e-5},
)
# piBO's beta for a new study (--prior-weight). 0: on bench/transfer.py (bench/README.md) the
# seed's priors cost 0.006 of final accuracy at weight 10 and 0.002 at weight 2 against none.
DEFAULT_PRIOR_WEIGHT = 0.0
# What tuner adds to the seed's fine-tuning recipes, as far as a space can express it.
PROBED_HEAD = {"head_init": "probe"}


@dataclass(frozen=True)
class StudyConfig:
    """Everything a worker needs to join a study, stored in the study's user attrs."""

    space_name: str
    space_text: str
    data: str
    model: str
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
    heartbeat_interval: int = 30
    grace_period: int = 120
    max_retry: int = 3
    artifacts: str = ""
    warm_start: bool = True
    cache_views: int = 4
    # piBO's beta: trial n follows the space's priors with chance beta / (beta + n); 0 turns
    # the priors off. A space without priors is sampled as before whatever the value.
    prior_weight: float = DEFAULT_PRIOR_WEIGHT
    # The model-based sampler's random start-up trials (TPE's n_startup_trials; warm-start
    # and prior trials count among them), and the multi-fidelity pruners' rungs: the first
    # after min_resource epochs, one in reduction_factor trials promoted at each. Hyperband
    # runs one bracket per power of reduction_factor in max_epochs / min_resource.
    startup_trials: int = 10
    min_resource: int = 1
    reduction_factor: int = 3
    # The head stage (tuner.search._head_stage): this many head-only trials right after the warm
    # start's recipes; later fine-tuning trials take lr and dropout from the best of them.
    head_trials: int = 0
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
        if not isinstance(self.prior_weight, (int, float)) or not 0 <= self.prior_weight < float("inf"):
            raise TunerError(f"--prior-weight must be a number >= 0, got {self.prior_weight!r}")
        for flag, value, least in (("--startup-trials", self.startup_trials, 0),
                                   ("--min-resource", self.min_resource, 1),
                                   ("--reduction-factor", self.reduction_factor, 2),
                                   ("--head-trials", self.head_trials, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise TunerError(f"{flag} must be an integer >= {least}, got {value!r}")

    def to_attr(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_attr(cls, value: Mapping[str, Any]) -> "StudyConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in value.items() if k in known})

    def space(self) -> SearchSpace:
        """The parsed space, parsed once per config object (sampler, pruner, warm start and
        objective all ask for it)."""
        parsed = self.__dict__.get("_space")
        if parsed is None:
            parsed = parse_space(self.space_text, source=f"{self.space_name}.yaml", name=self.space_name)
            self.keep_space(parsed)
        return parsed

    def keep_space(self, space: SearchSpace) -> None:
        """Remember an already parsed `space` of this config's text (not a field: never stored)."""
        object.__setattr__(self, "_space", space)


def epoch_cap(space: SearchSpace, max_epochs: int | None) -> int:
    """The most epochs any trial can run: Hyperband's max_resource."""
    branches = space.params.get("epochs", ())
    highest = max((int(b.high if not b.fixed else b.value) for b in branches), default=10)
    return min(highest, max_epochs) if max_epochs else highest


def make_sampler(config: StudyConfig, seed: int) -> optuna.samplers.BaseSampler:
    """The study's sampler; a space with priors wraps it so early trials follow them."""
    sampler = base_sampler(config, seed)
    space = config.space()
    if config.sampler != "random" and config.prior_weight > 0 and space.has_priors:
        # Seeded by the study seed, not the worker's: which trials follow the prior is a
        # property of the study, the same whichever worker samples a trial.
        sampler = PriorGuidedSampler(space, sampler, beta=config.prior_weight, seed=config.seed)
    if config.head_trials:
        # Outermost: a settled head setting overrides the prior's draw as well as the model's.
        sampler = HeadSettledSampler(sampler)
    return sampler


def base_sampler(config: StudyConfig, seed: int) -> optuna.samplers.BaseSampler:
    if config.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if config.sampler == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if config.sampler == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    # Conditional spaces need group=True for multivariate TPE; constant_liar keeps
    # parallel workers from all sampling next to the same running trial.
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True,
                                      n_startup_trials=config.startup_trials)


def make_pruner(config: StudyConfig) -> optuna.pruners.BasePruner:
    pruner = base_pruner(config)
    if config.head_trials:
        pruner = StageUnpruned(pruner)
    return pruner


def base_pruner(config: StudyConfig) -> optuna.pruners.BasePruner:
    cap = epoch_cap(config.space(), config.max_epochs)
    low, factor = min(config.min_resource, cap), config.reduction_factor
    if config.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=low, max_resource=cap, reduction_factor=factor)
    if config.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)
    if config.pruner == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=low, reduction_factor=factor)
    return optuna.pruners.NopPruner()


def read_config(study: optuna.Study) -> StudyConfig:
    raw = study.user_attrs.get(CONFIG_ATTR)
    if raw is None:
        raise StudyError(f"study {study.study_name!r} was not created by tuner (it has no stored config)")
    return StudyConfig.from_attr(raw)


def stored_attrs(storage: optuna.storages.BaseStorage, name: str) -> dict[str, Any]:
    """The study's user attrs (its config, its stop counter), in one read."""
    try:
        study_id = storage.get_study_id_from_name(name)
    except KeyError:
        known = ", ".join(optuna.get_all_study_names(storage=storage)) or "none"
        raise StudyError(f"no study named {name!r} in this storage (studies: {known})") from None
    return storage.get_study_user_attrs(study_id)


def config_from_attrs(name: str, attrs: Mapping[str, Any]) -> StudyConfig:
    raw = attrs.get(CONFIG_ATTR)
    if raw is None:
        raise StudyError(f"study {name!r} was not created by tuner (it has no stored config)")
    return StudyConfig.from_attr(raw)


def stored_config(storage: optuna.storages.BaseStorage, name: str) -> StudyConfig:
    """The study's stored config, read without building a sampler and pruner for it."""
    return config_from_attrs(name, stored_attrs(storage, name))


def load_study(storage: optuna.storages.BaseStorage, name: str, *, sampler_seed: int | None = None,
               config: StudyConfig | None = None) -> tuple[optuna.Study, StudyConfig]:
    """Load an existing study with the sampler and pruner its stored config describes
    (`config`: that config, already read)."""
    config = config or stored_config(storage, name)
    seed = config.seed if sampler_seed is None else sampler_seed
    study = optuna.load_study(
        study_name=name, storage=storage, sampler=make_sampler(config, seed), pruner=make_pruner(config)
    )
    return study, config


def read_study(storage: optuna.storages.BaseStorage, name: str) -> tuple[optuna.Study, StudyConfig]:
    """A study to read, not to sample (status, best, export, report, retrain): no sampler or
    pruner built from its config."""
    config = stored_config(storage, name)
    return optuna.load_study(study_name=name, storage=storage, sampler=optuna.samplers.RandomSampler()), config


def create_study(storage: optuna.storages.BaseStorage, name: str, config: StudyConfig, note: str) -> optuna.Study:
    """Create the study, store its config and note, and enqueue the warm-start trials."""
    try:
        study = optuna.create_study(
            study_name=name, storage=storage, direction=config.direction,
            sampler=make_sampler(config, config.seed), pruner=make_pruner(config),
        )
    except optuna.exceptions.DuplicatedStudyError:
        raise StudyError(f"a study named {name!r} already exists in this storage") from None
    study.set_user_attr(CONFIG_ATTR, config.to_attr())
    study.set_user_attr(CREATED_ATTR, datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    study.set_metric_names([config.metric])
    save_note(study, note)
    for params, attrs in first_trials(config)[: config.n_trials]:
        study.enqueue_trial(params, user_attrs=attrs)
    return study


def first_trials(config: StudyConfig) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(params, user attrs) enqueued at creation: the warm start's recipes, then the head stage.

    The stage comes after the recipes: measured on bench/transfer.py, the probed fine-tuning
    recipe is the study's quickest good result, and a stage before it only delays it.
    """
    warm = warm_start_params(config.space()) if config.warm_start else []
    return ([(p, {"warm_start": True}) for p in warm]
            + [(p, {HEAD_STAGE_ATTR: True}) for p in stage_params(config.head_trials)])


def save_note(study: optuna.Study, body: str) -> None:
    import optuna_dashboard

    optuna_dashboard.save_note(study, body)


def study_note(config: StudyConfig, space: SearchSpace, data_summary: str) -> str:
    """Markdown shown by optuna-dashboard: what is searched, on what data."""
    rows = "\n".join(
        f"| `{name}` | {b.type} | {_range(b)} | {_when(b)} | {_prior(b)} |"
        for name, bs in space.params.items() for b in bs
    )
    return (
        f"# {config.space_name}: {config.model} on {config.data}\n\n"
        f"{space.description}\n\n"
        f"* **Data:** {data_summary}\n"
        f"* **Model:** `{config.model}`, weights `{config.weights}`, {config.image_size}px\n"
        f"* **Metric:** `{config.metric}` ({config.direction})\n"
        f"* **Budget:** {config.n_trials} trials, sampler `{config.sampler}`, pruner `{config.pruner}`, "
        f"seed {config.seed}, max epochs {config.max_epochs or 'from the space'}\n\n"
        f"* **Priors:** {_prior_line(config, space)}\n\n"
        f"{_head_stage_line(config)}"
        "| parameter | type | range | when | prior |\n|---|---|---|---|---|\n" + rows + "\n\n" + ATTRS_NOTE
    )


# Optuna knows no state for a trial a worker ends on purpose: those show as FAIL here.
ATTRS_NOTE = """## Reading the trials

Optuna has no state for a trial that a worker ends on purpose, so these show as **FAIL** in
this dashboard although nothing failed; `tuner status` counts them apart:

* `handed_back: true`: the worker was stopped (Ctrl-C, SIGTERM, `tuner stop`) after a
  checkpoint; a WAITING copy of the trial resumes from it on the next worker.
* `over_budget: true`: the trial started after other workers had taken the whole budget;
  it never trained and does not count.
* a FAIL trial that a later trial names as its `failed_trial` (system attrs) was retried
  after its worker went silent for the grace period; the retry resumes its checkpoint.
* `duplicate_of: N`: a second retry of trial N that two workers queued at once; it was
  dropped before training.

Trials enqueued at creation say why: `warm_start: true` (one of the seed's recipes) or
`head_stage: true` (a head-only trial of the head stage, `--head-trials`).

Other attributes: `lineage` is the number of the first attempt (a retry and a hand-back
keep it, with its seed and checkpoints); `worker` is host:pid:device; `epoch`/`epochs` and
`last_metric` are the progress of a running trial; `stop_reason` says why a trial ended
(completed, early_stopped, pruned, diverged, oom).
"""


def _range(branch) -> str:
    from tuner.space._describe import branch_range

    return branch_range(branch)


def _prior(branch) -> str:
    from tuner.space._describe import branch_prior

    return branch_prior(branch)


def _head_stage_line(config: StudyConfig) -> str:
    if not config.head_trials:
        return ""
    return (f"* **Head stage:** {config.head_trials} head-only trials after the warm start's recipes; "
            "fine-tuning trials then take `lr` and `dropout` from the best head-only trial\n\n")


def _prior_line(config: StudyConfig, space: SearchSpace) -> str:
    if not space.has_priors:
        return "none in this space"
    if config.sampler == "random" or config.prior_weight == 0:
        return "stated in the space, not used (random sampler or prior weight 0)"
    return (f"trial n is drawn from them with chance {config.prior_weight:g}/({config.prior_weight:g}+n), "
            f"else by the `{config.sampler}` sampler")


def _when(branch) -> str:
    from tuner.space._describe import branch_when

    return branch_when(branch)


def warm_start_params(space: SearchSpace) -> list[dict[str, Any]]:
    """The seed's recommended configurations that this space can express, as enqueue params.

    Where a recipe fine-tunes and the space has `head_init`, it starts from a probed head
    (LP-FT): measured on bench/transfer.py, the seed's full fine-tuning recipe (head LR 1e-5)
    with a random head stayed near chance for its first epochs and was pruned.
    """
    out: list[dict[str, Any]] = []
    for config in WARM_START:
        if config.get("freeze") != "head":
            config = {**config, **PROBED_HEAD}
        params = expressible(space, config)
        # Two recommendations may shrink to the same params in a narrow space: enqueue once.
        if params is not None and params not in out:
            out.append(params)
    return out


def expressible(space: SearchSpace, config: Mapping[str, Any]) -> dict[str, Any] | None:
    """The part of a recommended configuration that `space` can express, as enqueue params.

    The freeze strategy defines a configuration: a space that cannot take it (or fixes
    another one) gets none of it. Any other value the space cannot take (a parameter
    it lacks, a choice or range it does not offer, a branch that is inactive there) is
    left to the sampler, "as far as the space can express them" (README). Rejecting the
    whole configuration instead meant that e.g. a space without `unfreeze_blocks`, or
    whose optimizers exclude adamw, never got the head / last-block warm start at all.
    """
    defining = "freeze"
    if defining in config and defining not in space.params and config[defining] != Hyperparams.freeze:
        return None  # the space leaves freeze at the trainer's default, and this is another strategy
    values: dict[str, Any] = {"task": "single_label"}
    params: dict[str, Any] = {}
    dropped: set[str] = set()
    for name in space.params:
        kept = {k: v for k, v in config.items() if k not in dropped}
        branch = space.active_branch(name, {**values, **kept})
        if branch is None:
            if name == defining and name in config:
                return None
            dropped.add(name)
            continue
        if branch.fixed:
            if name in config and config[name] != branch.value:
                if name == defining:
                    return None
                dropped.add(name)
            values[name] = branch.value
            continue
        if name not in config:
            continue
        value = config[name]
        if not branch.contains(value):
            if name == defining:
                return None
            dropped.add(name)
            continue
        values[name] = params[name] = value
    return params


# --- the global budget -------------------------------------------------------------

COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)


def budget_left(study: optuna.Study, n_trials: int) -> int:
    """Trials still to start: finished and running ones have taken their slot (queued ones not yet)."""
    taken = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING))
    return n_trials - sum(1 for t in taken if not t.user_attrs.get("over_budget"))


def within_budget(study: optuna.Study, trial: optuna.Trial, n_trials: int) -> bool:
    """Whether `trial` holds one of the first n_trials slots.

    Trial numbers are handed out atomically by the storage, so ranking by number gives
    racing workers one consistent answer: a trial is in if fewer than n_trials earlier
    trials still hold a slot. A retry continues its original's slot, so it always runs.
    """
    if trial.number < n_trials:
        # At most trial.number trials come before it, so fewer than n_trials can hold a
        # slot: no need to read the trial's attrs or the study's trials (the hot path).
        return True
    if trial.user_attrs.get("lineage", trial.number) != trial.number:
        return True
    earlier = [
        t for t in study.get_trials(deepcopy=False, states=COUNTED)
        if t.number < trial.number and not t.user_attrs.get("over_budget")
    ]
    return len(earlier) < n_trials


def finished_count(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
