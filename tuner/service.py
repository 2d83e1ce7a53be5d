"""What `tuner create` and `tuner run` do: validate every input, then create or join the study."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

import optuna

from tuner.errors import DataError, StorageError, StudyError
from tuner.space import SearchSpace, load_space
from tuner.storage import StorageSettings, local_folder, normalize_url, open_storage, ping, sqlite_file
from tuner.study import MACHINE_LOCAL, StudyConfig, create_study, load_study, study_note

if TYPE_CHECKING:
    from tuner.data import ImageData


@dataclass(frozen=True)
class StudyRequest:
    """A study's settings as the user gave them; anything None comes from the space file."""

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
    prior_weight: float = 10.0
    # Machine-local: where this process keeps the decoded images, not part of the study.
    memory_limit_gib: float | None = None


@dataclass(frozen=True)
class PreparedStudy:
    study: optuna.Study
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


def build_config(request: StudyRequest, storage: StorageSettings) -> tuple[StudyConfig, SearchSpace, ImageData]:
    """Validate the space, model and data before anything is written to the storage."""
    # Imported here, not at the top: these import torch, and the read-only commands
    # (status, best, export, ...) import this module yet must start without torch's seconds.
    from tuner.checkpoints import default_artifacts_dir
    from tuner.data import DataConfig, gib_to_bytes, load_data
    from tuner.models import ModelSpec, build_model
    from tuner.objective import check_space, metric_name

    space = load_space(request.space)
    check_space(space)
    model = request.model or space.settings.get("model") or "resnet18"
    image_size = request.image_size or space.settings.get("image_size") or 224
    weights = request.weights or space.settings.get("weights") or "imagenet"
    max_epochs = request.max_epochs or space.settings.get("max_epochs")
    ModelSpec(name=model, weights=weights)  # an unknown model name fails before data loads
    if request.data is None:
        raise DataError("--data is required to create a study (a folder, a CSV manifest, or 'digits')")
    data = load_data(DataConfig(request.data, image_size, request.val_fraction, request.seed,
                                memory_limit=gib_to_bytes(request.memory_limit_gib),
                                spill_dir=local_folder(storage.url, "decoded")))
    # Build the model once: weights that cannot be had (no cache offline, a bad file) fail
    # here with their fix, not in every worker's first trial.
    build_model(ModelSpec(name=model, weights=weights, num_classes=data.num_classes))
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
    )
    return config, space, data


def _absolute(source: str) -> str:
    # Workers may start in another folder: store paths absolute ("digits" stays a name).
    if source == "digits" or source.startswith("s3://"):
        return source
    return str(Path(source).expanduser().resolve())


def prepare_study(storage: StorageSettings, name: str | None, request: StudyRequest,
                  explicit: Iterable[str], *, create_only: bool = False) -> PreparedStudy:
    """Create the study (or, for `run`, join a compatible existing one).

    Every input is validated before the storage is opened, so a bad space, model or
    data folder leaves the storage untouched.
    """
    normalize_url(storage.url)
    study_name = name or default_study_name(request.space, request.data or "data")
    built = build_config(request, storage) if request.data is not None or create_only else None
    if built is None:
        require_existing_sqlite(storage.url)
    rdb = open_storage(storage, heartbeat=False)
    ping(rdb)
    if study_name in optuna.get_all_study_names(storage=rdb):
        if create_only:
            raise StudyError(f"a study named {study_name!r} already exists in this storage")
        study, stored = load_study(rdb, study_name)
        check_compatible(study_name, stored, request, explicit)
        return PreparedStudy(study, stored, False, built[2] if built else None)
    if built is None:
        raise DataError(f"study {study_name!r} does not exist yet: --data is required to create it")
    config, space, data = built
    from tuner.data import describe_source  # imports torch: see build_config

    note = study_note(config, space, describe_source(request.data))
    return PreparedStudy(create_study(rdb, study_name, config, note), config, True, data)


def check_compatible(name: str, stored: StudyConfig, request: StudyRequest, explicit: Iterable[str]) -> None:
    """Options given explicitly must match the stored config; machine-local ones may differ."""
    differences = []
    for option in sorted(set(explicit)):
        if option in MACHINE_LOCAL or option not in StudyRequest.__dataclass_fields__:
            continue
        given = getattr(request, option)
        if option == "space":
            if load_space(given).text != stored.space_text:
                differences.append(f"space (the content of {given} differs from the study's)")
            continue
        if option == "weights" and given not in ("imagenet", "none"):
            given = _absolute(given)
        if given != getattr(stored, option):
            differences.append(f"{option.replace('_', '-')} (study has {getattr(stored, option)!r}, given {given!r})")
    if differences:
        raise StudyError(
            f"study {name!r} already exists with a different config: {'; '.join(differences)}. "
            "Use another --study name, or leave those options out to continue it"
        )


def request_from(values: Mapping[str, Any]) -> StudyRequest:
    fields = StudyRequest.__dataclass_fields__
    return StudyRequest(**{k: v for k, v in values.items() if k in fields})
