"""Opening a study once per process: the one module that loads or creates Optuna studies.

Imports no torch: the read commands (status, best, export, studies) open their studies here
too. Creating a study's inputs (model, data, input size) is tuner.service._prepare's.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping

import optuna

from tuner.config import MachineOptions, StudyConfig
from tuner.errors import StorageError, StudyError
from tuner.search import config_from_attrs, make_pruner, make_sampler, set_up_new_study, stored_attrs, study_space
from tuner.service._storage import ResilientRDBStorage, StorageSettings, open_storage, ping, sqlite_file
from tuner.space import SearchSpace

if TYPE_CHECKING:
    import torch

    from tuner.training import ImageData


@dataclass(frozen=True)
class OpenedStudy:
    """A study as this process opened it, handed to whatever works on it or reads it."""

    name: str
    config: StudyConfig
    space: SearchSpace  # parsed once, from the stored text
    study: optuna.Study
    storage: ResilientRDBStorage
    # The URL, with the study's own heartbeat settings when opened for work.
    settings: StorageSettings
    machine: MachineOptions = field(default_factory=MachineOptions)
    # The study's user attrs as read at opening: the stop counter a worker starts from.
    attrs: Mapping[str, Any] = field(default_factory=dict)
    # Set together once this process has checked the study for work on this machine (`tuner
    # run`, see tuner.service._prepare): its images loaded and checked, and the device its
    # trials train on, resolved. None: not checked yet (a `tuner worker` checks it itself).
    data: ImageData | None = None
    device: torch.device | None = None
    created: bool = False

    def close(self) -> None:
        """Close the storage's connections: whoever opened the study closes it when done."""
        self.storage.close()

    def __enter__(self) -> OpenedStudy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def ready(self, data: ImageData, device: torch.device) -> OpenedStudy:
        """This study, checked for work here: its space checked, `data` and `device` as checked."""
        return replace(self, data=data, device=device)


def require_existing_sqlite(url: str) -> None:
    """Commands that only read a study must not create an empty database by accident."""
    database = sqlite_file(url)
    if database is not None and not database.exists():
        raise StorageError(f"storage file {database} does not exist (create a study first)")


def connect(settings: StorageSettings) -> ResilientRDBStorage:
    """The storage, reached once now so that a wrong URL fails here; no heartbeat yet."""
    storage = open_storage(settings, heartbeat=False)
    with closed_on_error(storage):
        ping(storage)
    return storage


@contextmanager
def closed_on_error(storage: ResilientRDBStorage) -> Iterator[ResilientRDBStorage]:
    """`storage`, closed if what follows fails: the OpenedStudy that would own it never exists."""
    try:
        yield storage
    except BaseException:
        storage.close()
        raise


def load_any(storage: optuna.storages.BaseStorage, name: str) -> optuna.Study:
    """Any study of the storage, tuner's or not, to read: no sampler or pruner from a config."""
    return optuna.load_study(study_name=name, storage=storage)


def study_name(storage: optuna.storages.BaseStorage, name: str | None) -> str:
    """The study a command names; when it names none, the storage's only study (every read and
    manage command's rule), else one error listing the studies to choose from."""
    if name is not None:
        return name
    names = optuna.get_all_study_names(storage=storage)
    if len(names) == 1:
        return names[0]
    if not names:
        raise StudyError("this storage holds no study yet (create one with tuner run or tuner create)")
    raise StudyError(f"this storage holds {len(names)} studies: name one with --study ({', '.join(names)})")


def open_for_reading(url: str, name: str | None, *, machine: MachineOptions | None = None,
                     storage: ResilientRDBStorage | None = None, read_only: bool = False) -> OpenedStudy:
    """A tuner study to read or manage (best, export, report, retrain, extend, stop, ...): `name`,
    or the storage's only study; `machine`: this machine's options where the caller trains (retrain);
    `read_only`: the caller writes nothing (best, export), so a file it may not write opens read-only."""
    storage = storage or connect(StorageSettings(url=url, read_only=read_only))
    with closed_on_error(storage):
        name = study_name(storage, name)
        attrs = stored_attrs(storage, name)
        config = config_from_attrs(name, attrs)
        # A random sampler: nothing samples here, and building the config's own costs time.
        study = optuna.load_study(study_name=name, storage=storage, sampler=optuna.samplers.RandomSampler())
        return OpenedStudy(name, config, study_space(config), study, storage, StorageSettings(url=url),
                           machine or MachineOptions(), attrs)


def open_for_work(settings: StorageSettings, name: str, machine: MachineOptions, *,
                  seed_of: Callable[[StudyConfig], int] | None = None,
                  storage: ResilientRDBStorage | None = None, space: SearchSpace | None = None) -> OpenedStudy:
    """Join an existing study: its stored config, its heartbeat, its sampler and pruner.

    `seed_of` gives the sampler's seed (default: the study seed); `storage` and `space`: the
    storage this process has open already and the study's space parsed already."""
    storage = storage or connect(settings)
    with closed_on_error(storage):
        attrs = stored_attrs(storage, name)
        config = config_from_attrs(name, attrs)
        space = space or study_space(config)
        working = start_heartbeat(storage, settings, config)
        seed = config.seed if seed_of is None else seed_of(config)
        study = optuna.load_study(study_name=name, storage=storage, sampler=make_sampler(config, space, seed),
                                  pruner=make_pruner(config, space))
        return OpenedStudy(name, config, space, study, storage, working, machine, attrs)


def open_new(settings: StorageSettings, name: str, config: StudyConfig, space: SearchSpace, note: str,
             machine: MachineOptions, *, storage: ResilientRDBStorage | None = None) -> OpenedStudy:
    """Create the study for work, its sampler seeded by the study seed (a lone `tuner run`)."""
    storage = storage or connect(settings)
    with closed_on_error(storage):
        working = start_heartbeat(storage, settings, config)
        study = create_study(storage, name, config, note, space)
        return OpenedStudy(name, config, space, study, storage, working, machine, created=True)


def start_heartbeat(storage: ResilientRDBStorage, settings: StorageSettings, config: StudyConfig) -> StorageSettings:
    """The study's own heartbeat settings, turned on in the open storage (see start_heartbeat there)."""
    working = replace(settings, heartbeat_interval=config.heartbeat_interval, grace_period=config.grace_period,
                      max_retry=config.max_retry)
    storage.start_heartbeat(working)
    return working


def create_study(storage: optuna.storages.BaseStorage, name: str, config: StudyConfig, note: str,
                 space: SearchSpace | None = None) -> optuna.Study:
    """Create the study, store its config and note, and enqueue the warm-start trials
    (`space`: the config's space, when parsed already)."""
    space = space or study_space(config)
    try:
        study = optuna.create_study(
            study_name=name, storage=storage, direction=config.direction,
            sampler=make_sampler(config, space, config.seed), pruner=make_pruner(config, space),
        )
    except optuna.exceptions.DuplicatedStudyError:
        raise StudyError(f"a study named {name!r} already exists in this storage") from None
    set_up_new_study(study, config, space, note)
    return study
