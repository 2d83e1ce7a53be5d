"""What `tuner create` and `tuner run` do: validate every input, then create or join the study.

Imports torch (model, data, input size): the read commands never import this module.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Mapping

import optuna
import torch

from tuner.config import MachineOptions, StudyConfig, StudyRequest, requested_settings
from tuner.errors import DataError, ModelError, StudyError
from tuner.search import check_head_stage, study_note
from tuner.service._artifact_store import default_artifacts_dir
from tuner.service._open import (OpenedStudy, closed_on_error, connect, open_for_work, open_new,
                                 require_existing_sqlite)
from tuner.service._storage import ResilientRDBStorage, StorageSettings, local_folder, normalize_url, storage_is_empty
from tuner.space import SearchSpace, load_space
from tuner.text import byte_size
from tuner.training import (
    ImageData,
    ModelSpec,
    build_model,
    check_same_data,
    check_space,
    data_config,
    data_fingerprint,
    describe_source,
    forward_bytes,
    load_data,
    machine_ram,
    metric_name,
    training_device,
)


def default_study_name(space_ref: str, data: str) -> str:
    """`default-digits`, `fine_tuning-flowers`: from the space and the data's folder or file."""
    stem = Path(data.rstrip("/")).stem or "data"
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{Path(space_ref).stem}-{stem}")


def prepare_study(settings: StorageSettings, name: str | None, request: StudyRequest, machine: MachineOptions,
                  *, create_only: bool = False) -> OpenedStudy:
    """Create the study (or, for `run`, join a compatible existing one), opened for work with
    the study seed, its data loaded and checked.

    Every input is validated before anything is written: a bad device, space, model or
    data folder leaves the storage as it was (no SQLite file, no tables, no study).
    """
    normalize_url(settings.url)
    study_name = name or default_study_name(request.space, request.data or "data")
    if storage_is_empty(settings):
        return create_new(settings, None, study_name, request, machine)
    storage = connect(settings)
    with closed_on_error(storage):
        if study_name in optuna.get_all_study_names(storage=storage):
            if create_only:
                raise StudyError(f"a study named {study_name!r} already exists in this storage")
            return continue_study(storage, settings, study_name, request, machine)
        return create_new(settings, storage, study_name, request, machine)


def create_new(settings: StorageSettings, storage: ResilientRDBStorage | None, study_name: str,
               request: StudyRequest, machine: MachineOptions) -> OpenedStudy:
    """A new study opened for work, every input checked before the storage is written
    (`storage`: None while it holds no table yet, and then the study's creation makes them)."""
    if request.data is None:
        if storage is None:
            require_existing_sqlite(settings.url)
        raise DataError(f"study {study_name!r} does not exist yet: --data is required to create it")
    # `--device gpu`, or cuda without CUDA, fails before the study exists.
    device = training_device(machine.device, machine.compile)
    config, space, data = build_config(request, settings, machine)
    note = study_note(config, space, describe_source(request.data))
    return open_new(settings, study_name, config, space, note, machine, storage=storage).ready(data, device)


def continue_study(storage, settings: StorageSettings, name: str, request: StudyRequest,
                   machine: MachineOptions) -> OpenedStudy:
    """Join an existing study with its stored settings; only machine-local flags may differ."""
    opened = open_for_work(settings, name, machine, storage=storage)
    check_compatible(name, opened.config, request.given)
    return ready_for_work(opened)


def ready_for_work(opened: OpenedStudy) -> OpenedStudy:
    """A joined study checked for work on this machine, before this process writes anything:
    the device first (a bad one fails before seconds of decoding), the stored space, the
    model's name, then the data. The one check of each for `tuner run` and `tuner worker`."""
    device = training_device(opened.machine.device, opened.machine.compile)
    check_space(opened.space)
    # The study stores the model's name only: a machine that cannot import it (a
    # MODULE:FUNCTION that is not here, timm not installed) stops before any trial.
    ModelSpec(opened.config.model, weights=opened.config.weights)
    return opened.ready(load_checked_data(opened), device)


def load_checked_data(opened: OpenedStudy) -> ImageData:
    """The study's images as this machine finds them; other data (another folder, more
    classes) would finish the budget on it silently, so it is refused."""
    config, machine = opened.config, opened.machine
    data = load_data(data_config(config, machine, local_folder(opened.settings.url, "decoded")))
    check_same_data(config.data_fingerprint, data, machine.data or config.data)
    return data


def build_config(request: StudyRequest, settings: StorageSettings,
                 machine: MachineOptions) -> tuple[StudyConfig, SearchSpace, ImageData]:
    """Validate the space, model, weights, data and input size of a new study, before
    anything is written to the storage (the device is checked before this)."""
    space = load_space(request.space)
    check_space(space)
    values = requested_settings(request, space.settings)
    check_head_stage(space, values["head_trials"])
    ModelSpec(name=values["model"], weights=values["weights"])  # an unknown model name fails before data loads
    if request.data is None:
        raise DataError("--data is required to create a study (a folder, a CSV manifest, or 'digits')")
    draft = StudyConfig(space_name=space.name, space_text=space.text, data=request.data, **values)
    data = load_data(data_config(draft, dataclasses.replace(machine, data=None),
                                 local_folder(settings.url, "decoded")))
    # Build the model once: weights that cannot be had (no cache offline, a bad file) fail
    # here with their fix, not in every worker's first trial.
    built = build_model(ModelSpec(name=draft.model, weights=draft.weights, num_classes=data.num_classes))
    check_input_size(built.model, draft.model, draft.image_size)
    config = dataclasses.replace(
        draft, data=_absolute(request.data),
        weights=_absolute(draft.weights) if draft.weights not in ("imagenet", "none") else draft.weights,
        metric=metric_name(data.multilabel),
        # Absolute, like data: a relative --artifacts stored as given would name another
        # folder for every worker started elsewhere, and a retry would silently find no
        # checkpoint and train from scratch.
        artifacts=_absolute(machine.artifacts) if machine.artifacts else default_artifacts_dir(
            normalize_url(settings.url)),
        data_fingerprint=data_fingerprint(data, request.data),
    )
    return config, space, data


# Input sizes tried, smallest first, to tell the user what a model needs when theirs fails.
PROBE_SIZES = (16, 24, 32, 48, 64, 75, 96, 112, 128, 160, 192, 224, 256, 299, 384, 512)


def check_input_size(network, name: str, image_size: int) -> None:
    """A dry forward pass of one image at the study's size: a model that cannot take it
    (ViT's fixed 224 px, Inception's 75 px minimum) fails here, not in every trial."""
    network.eval()
    fixed = getattr(network, "image_size", None)  # torchvision's ViTs take exactly one size
    if isinstance(fixed, int) and fixed != image_size:
        raise ModelError(f"{name} needs {fixed} px input, got {image_size} (--image-size {fixed})")
    check_forward_memory(network, name, image_size)
    try:
        forward(network, image_size)
        return
    except Exception as error:  # noqa: BLE001 - any failure means this size does not fit
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    size = first_accepted(network, [s for s in PROBE_SIZES if s > image_size])
    if size is not None:
        raise ModelError(f"{name} needs at least {size} px input, got {image_size} (--image-size {size})")
    raise ModelError(f"{name} cannot take {image_size} px input: {reason}")


def check_forward_memory(network, name: str, image_size: int) -> None:
    """Refuse a size whose one-image forward cannot fit in this machine's RAM: the dry pass
    itself would run until the kernel ended the process without a word."""
    needed, ram = forward_bytes(network, image_size), machine_ram()
    if needed > ram:
        raise ModelError(f"{name} at {image_size} px: one image's forward keeps about {byte_size(needed)} "
                         f"(input and activations, for the backward pass), more than this machine's "
                         f"{byte_size(ram)} of RAM (--image-size)")


def smallest_input_size(network) -> int | None:
    """The smallest of PROBE_SIZES (or a ViT's one fixed size) the model takes; None: none of them."""
    network.eval()
    fixed = getattr(network, "image_size", None)
    return first_accepted(network, [fixed] if isinstance(fixed, int) else list(PROBE_SIZES))


def first_accepted(network, sizes: list[int]) -> int | None:
    for size in sizes:
        try:
            forward(network, size)
        except Exception:  # noqa: BLE001 - any failure means this size does not fit
            continue
        return size
    return None


def forward(network, size: int) -> None:
    with torch.no_grad():
        network(torch.zeros(1, 3, size, size))


def _absolute(source: str) -> str:
    # Workers may start in another folder: store paths absolute ("digits" stays a name).
    if source == "digits" or source.startswith("s3://"):
        return source
    return str(Path(source).expanduser().resolve())


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
