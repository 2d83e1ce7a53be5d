"""What `tuner create` and `tuner run` do: validate every input, then create or join the study."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

import optuna

from tuner.errors import DataError, ModelError, StorageError, StudyError
from tuner.training._fingerprint import check_same_data, data_fingerprint
from tuner.space._space import SearchSpace, load_space
from tuner.service._storage import (
    StorageSettings,
    local_folder,
    normalize_url,
    open_storage,
    ping,
    sqlite_file,
    storage_is_empty,
)
from tuner.search._study import DEFAULT_PRIOR_WEIGHT, StudyConfig, create_study, stored_config, study_note

if TYPE_CHECKING:
    from tuner.training._data import ImageData


@dataclass(frozen=True)
class StudyRequest:
    """A new study's settings as the user gave them on the command line; anything None comes
    from the space file. Kept apart from StudyConfig on purpose: build_config resolves a
    request into the StudyConfig that is stored, and from then on only the stored config
    counts (a continuation only checks its explicit flags against it)."""

    space: str = "default"
    data: str | None = None
    model: str | None = None
    image_size: int | None = None
    weights: str | None = None  # None: the space file's settings.weights, else imagenet
    val_fraction: float = 0.2
    sampler: str = "tpe"
    pruner: str = "asha"
    n_trials: int = 20
    seed: int = 0
    max_epochs: int | None = None
    artifacts: str | None = None
    warm_start: bool = True
    cache_views: int = 4
    prior_weight: float = DEFAULT_PRIOR_WEIGHT
    startup_trials: int = 10
    min_resource: int = 1
    reduction_factor: int = 3
    head_trials: int = 0
    # Machine-local: where this process keeps the decoded images, not part of the study.
    memory_limit_gib: float | None = None


@dataclass(frozen=True)
class PreparedStudy:
    """A study ready for this process's worker: its config and data, resolved and checked once."""

    name: str
    config: StudyConfig
    created: bool
    data: ImageData | None


def default_study_name(space_ref: str, data: str) -> str:
    """`default-digits`, `fine_tuning-flowers`: from the space and the data's folder or file."""
    stem = Path(data.rstrip("/")).stem or "data"
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{Path(space_ref).stem}-{stem}")


def require_existing_sqlite(url: str) -> None:
    """Commands that only read a study must not create an empty database by accident."""
    database = sqlite_file(url)
    if database is not None and not database.exists():
        raise StorageError(f"storage file {database} does not exist (create a study first)")


def build_config(request: StudyRequest, storage: StorageSettings,
                 device: str = "auto") -> tuple[StudyConfig, SearchSpace, ImageData]:
    """Validate the device, space, model, weights, data and input size of a new study,
    before anything is written to the storage."""
    # Imported here, not at the top: these import torch, and the read-only commands
    # (status, best, export, ...) import this module yet must start without torch's seconds.
    from tuner.service._artifact_store import default_artifacts_dir
    from tuner.search._head_stage import check_head_stage
    from tuner.training._models import ModelSpec, build_model
    from tuner.training._hyperparams import check_space
    from tuner.training._task import metric_name
    from tuner.training._loop import resolve_device

    resolve_device(device)  # `--device gpu`, or cuda without CUDA, fails before the study exists
    space = load_space(request.space)
    check_space(space)
    check_head_stage(space, request.head_trials)
    model = request.model or space.settings.get("model") or "resnet18"
    image_size = request.image_size or space.settings.get("image_size") or 224
    weights = request.weights or space.settings.get("weights") or "imagenet"
    max_epochs = request.max_epochs or space.settings.get("max_epochs")
    ModelSpec(name=model, weights=weights)  # an unknown model name fails before data loads
    if request.data is None:
        raise DataError("--data is required to create a study (a folder, a CSV manifest, or 'digits')")
    data = load_study_data(request.data, image_size, request.val_fraction, request.seed,
                           request.memory_limit_gib, storage)
    # Build the model once: weights that cannot be had (no cache offline, a bad file) fail
    # here with their fix, not in every worker's first trial.
    built = build_model(ModelSpec(name=model, weights=weights, num_classes=data.num_classes))
    check_input_size(built.model, model, image_size)
    config = StudyConfig(
        space_name=space.name, space_text=space.text, data=_absolute(request.data), model=model,
        weights=_absolute(weights) if weights not in ("imagenet", "none") else weights,
        image_size=image_size, val_fraction=request.val_fraction, sampler=request.sampler,
        pruner=request.pruner, n_trials=request.n_trials, seed=request.seed, max_epochs=max_epochs,
        metric=metric_name(data.multilabel), direction="maximize",
        heartbeat_interval=storage.heartbeat_interval, grace_period=storage.grace_period,
        max_retry=storage.max_retry,
        # Absolute, like data: a relative --artifacts stored as given would name another
        # folder for every worker started elsewhere, and a retry would silently find no
        # checkpoint and train from scratch.
        artifacts=_absolute(request.artifacts) if request.artifacts else default_artifacts_dir(
            normalize_url(storage.url)),
        warm_start=request.warm_start, cache_views=request.cache_views, prior_weight=request.prior_weight,
        startup_trials=request.startup_trials, min_resource=request.min_resource,
        reduction_factor=request.reduction_factor, head_trials=request.head_trials,
        data_fingerprint=data_fingerprint(data, request.data),
    )
    config.keep_space(space)  # parsed once per process: create_study and the worker reuse it
    return config, space, data


def load_study_data(source: str, image_size: int, val_fraction: float, seed: int,
                    memory_limit_gib: float | None, storage: StorageSettings) -> ImageData:
    from tuner.training._data import DataConfig, gib_to_bytes, load_data

    return load_data(DataConfig(source, image_size, val_fraction, seed,
                                memory_limit=gib_to_bytes(memory_limit_gib),
                                spill_dir=local_folder(storage.url, "decoded")))


# Input sizes tried, smallest first, to tell the user what a model needs when theirs fails.
PROBE_SIZES = (16, 24, 32, 48, 64, 75, 96, 112, 128, 160, 192, 224, 256, 299, 384, 512)


def check_input_size(network, name: str, image_size: int) -> None:
    """A dry forward pass of one image at the study's size: a model that cannot take it
    (ViT's fixed 224 px, Inception's 75 px minimum) fails here, not in every trial."""
    network.eval()
    try:
        forward(network, image_size)
        return
    except Exception as error:  # noqa: BLE001 - any failure means this size does not fit
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    fixed = getattr(network, "image_size", None)  # torchvision's ViTs take exactly one size
    if isinstance(fixed, int):
        raise ModelError(f"{name} needs {fixed} px input, got {image_size} (--image-size {fixed})")
    for size in (s for s in PROBE_SIZES if s > image_size):
        try:
            forward(network, size)
        except Exception:  # noqa: BLE001
            continue
        raise ModelError(f"{name} needs at least {size} px input, got {image_size} (--image-size {size})")
    raise ModelError(f"{name} cannot take {image_size} px input: {reason}")


def forward(network, size: int) -> None:
    import torch

    with torch.no_grad():
        network(torch.zeros(1, 3, size, size))


def _absolute(source: str) -> str:
    # Workers may start in another folder: store paths absolute ("digits" stays a name).
    if source == "digits" or source.startswith("s3://"):
        return source
    return str(Path(source).expanduser().resolve())


def prepare_study(storage: StorageSettings, name: str | None, request: StudyRequest,
                  explicit: Iterable[str], *, create_only: bool = False, device: str = "auto") -> PreparedStudy:
    """Create the study (or, for `run`, join a compatible existing one).

    Every input is validated before anything is written: a bad device, space, model or
    data folder leaves the storage as it was (no SQLite file, no tables, no study).
    """
    normalize_url(storage.url)
    study_name = name or default_study_name(request.space, request.data or "data")
    rdb = None
    if not storage_is_empty(storage):
        rdb = open_storage(storage, heartbeat=False)
        ping(rdb)
        if study_name in optuna.get_all_study_names(storage=rdb):
            if create_only:
                raise StudyError(f"a study named {study_name!r} already exists in this storage")
            return continue_study(rdb, study_name, request, explicit, storage, device)
    if request.data is None:
        if rdb is None:
            require_existing_sqlite(storage.url)
        raise DataError(f"study {study_name!r} does not exist yet: --data is required to create it")
    config, space, data = build_config(request, storage, device)
    if rdb is None:
        rdb = open_storage(storage, heartbeat=False)
        ping(rdb)
    from tuner.training._data import describe_source  # imports torch: see build_config

    note = study_note(config, space, describe_source(request.data))
    create_study(rdb, study_name, config, note)
    return PreparedStudy(study_name, config, True, data)


def continue_study(rdb, name: str, request: StudyRequest, explicit: Iterable[str], storage: StorageSettings,
                   device: str) -> PreparedStudy:
    """Join an existing study with its stored settings; only machine-local flags may differ."""
    from tuner.training._loop import resolve_device

    stored = stored_config(rdb, name)
    check_compatible(name, stored, given_settings(request, storage, explicit))
    resolve_device(device)
    source = request.data or stored.data
    data = load_study_data(source, stored.image_size, stored.val_fraction, stored.seed,
                           request.memory_limit_gib, storage)
    check_same_data(stored.data_fingerprint, data, source)
    return PreparedStudy(name, stored, False, data)


# The flags that set a stored setting (StudyConfig field names); every other flag is
# machine-local (device, data, artifacts, num workers, cache dir, memory limit, compile).
STORED_OPTIONS = ("space", "model", "image_size", "weights", "val_fraction", "sampler", "pruner", "n_trials",
                  "seed", "max_epochs", "warm_start", "cache_views", "heartbeat_interval", "grace_period",
                  "max_retry", "prior_weight", "startup_trials", "min_resource", "reduction_factor",
                  "head_trials")


def given_settings(request: StudyRequest, storage: StorageSettings, explicit: Iterable[str]) -> dict[str, Any]:
    """The stored settings the user gave explicitly on the command line, by field name."""
    values = {**{f: getattr(request, f) for f in StudyRequest.__dataclass_fields__},
              "heartbeat_interval": storage.heartbeat_interval, "grace_period": storage.grace_period,
              "max_retry": storage.max_retry}
    return {option: values[option] for option in STORED_OPTIONS if option in set(explicit)}


def check_compatible(name: str, stored: StudyConfig, given: Mapping[str, Any]) -> None:
    """Stored settings given explicitly must match the stored config: it is the study's one truth."""
    differences = []
    for option, value in given.items():
        flag = flag_name(option)
        if option == "space":
            if load_space(value).text != stored.space_text:
                differences.append(f"{flag} (the content of {value} differs from the study's "
                                   f"{stored.space_name!r} space)")
            continue
        if option == "weights" and value not in ("imagenet", "none"):
            value = _absolute(value)
        if value != getattr(stored, option):
            hint = "; raise the budget with `tuner extend`" if option == "n_trials" else ""
            differences.append(f"{flag} (study has {getattr(stored, option)!r}, given {value!r}{hint})")
    if differences:
        raise StudyError(
            f"study {name!r} already exists with a different config: {'; '.join(differences)}. "
            "Use another --study name, or leave those options out to continue it"
        )


def flag_name(option: str) -> str:
    return "--no-warm-start" if option == "warm_start" else "--" + option.replace("_", "-")


def request_from(values: Mapping[str, Any]) -> StudyRequest:
    fields = StudyRequest.__dataclass_fields__
    return StudyRequest(**{k: v for k, v in values.items() if k in fields})
