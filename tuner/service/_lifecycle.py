"""Managing studies: list them, raise a budget, stop the workers, queue a configuration, delete one."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import TrialState

from tuner.errors import SpaceError, StudyError
from tuner.search import (
    CONFIG_ATTR,
    CREATED_ATTR,
    best_value_of,
    budget_left,
    finished_count,
    is_maximized,
    request_stop,
    study_best,
)
from tuner.service._artifact_store import remove_study_artifacts
from tuner.service._counts import trial_counts
from tuner.service._open import OpenedStudy, connect, load_any
from tuner.service._storage import StorageSettings, mask_url
from tuner.space import Branch, SearchSpace, branch_range, is_number
from tuner.text import plural

ENQUEUED_ATTR = "enqueued"


# --- tuner studies ---------------------------------------------------------------------

def list_studies(storage_url: str) -> dict[str, Any]:
    """Every study of the storage; one that tuner did not create is listed as foreign."""
    with connect(StorageSettings(url=storage_url, read_only=True)) as storage:
        rows = [study_row(load_any(storage, name))
                for name in optuna.get_all_study_names(storage=storage)]
    return {"storage": mask_url(storage_url), "studies": rows}


def study_row(study: optuna.Study) -> dict[str, Any]:
    trials = study.get_trials(deepcopy=False)
    attrs = study.user_attrs
    config = attrs.get(CONFIG_ATTR)
    return {
        "name": study.study_name,
        "tuner": config is not None,
        "metric": config["metric"] if config else None,
        "n_trials": config["n_trials"] if config else None,
        **trial_counts(trials),  # counted as `tuner status` counts them
        "best": best_value(study),
        "created": attrs.get(CREATED_ATTR) or first_start(trials),
    }


def best_value(study: optuna.Study) -> float | None:
    """The value of the study's best trial (a pruned one's best epoch counts); None while no trial
    counts, and for a foreign multi-objective study."""
    best = study_best(study)
    return None if best is None else best_value_of(best, is_maximized(study))


def first_start(trials) -> str | None:
    """A foreign study has no creation time: its first trial's start stands in for it."""
    starts = [t.datetime_start for t in trials if t.datetime_start is not None]
    return min(starts).isoformat(timespec="seconds") if starts else None


# --- tuner extend ----------------------------------------------------------------------

def extend(opened: OpenedStudy, n_trials: int) -> tuple[int, int]:
    """Set the study's budget to `n_trials`; running workers read it within an epoch."""
    study, config, name = opened.study, opened.config, opened.name
    finished = finished_count(study)
    if n_trials < max(finished, 1):
        raise StudyError(f"--n-trials {n_trials} is below the {plural(finished, 'trial')} study {name!r} has finished "
                         "already (a budget counts finished trials)")
    updated = dataclasses.replace(config, n_trials=n_trials)
    study.set_user_attr(CONFIG_ATTR, updated.to_attr())
    return config.n_trials, n_trials


# --- tuner stop ------------------------------------------------------------------------

def stop(opened: OpenedStudy) -> int:
    """Ask the study's workers to hand their trials back and exit; the number of running trials."""
    study = opened.study
    # Counted before the request: a worker that sees it at once hands its trial back (FAIL)
    # before a count after the request could see it running.
    running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
    request_stop(study)
    return running


# --- tuner enqueue ---------------------------------------------------------------------

def read_params(path: str) -> dict[str, Any]:
    """`name: value` lines, or a space file whose parameters are all fixed (`tuner best --format yaml`)."""
    try:
        doc = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise SpaceError(f"--params {path}: cannot read it: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise SpaceError(f"--params {path}: invalid YAML: {exc}") from None
    if isinstance(doc, Mapping) and isinstance(doc.get("params"), Mapping):
        doc = {key: fixed_value(path, key, entry) for key, entry in doc["params"].items()}
    if not isinstance(doc, Mapping) or not doc:
        raise SpaceError(f"--params {path}: expected a mapping of parameter names to values "
                         "(or the output of tuner best --format yaml)")
    return dict(doc)


def fixed_value(path: str, key: str, entry: Any) -> Any:
    if isinstance(entry, Mapping) and entry.get("type") == "fixed" and "value" in entry:
        return entry["value"]
    if isinstance(entry, Mapping):
        raise SpaceError(f"--params {path}: {key} must be a value or {{type: fixed, value: ...}}, got {dict(entry)}")
    return entry


def check_params(space: SearchSpace, params: Mapping[str, Any], task: str, where: str,
                 max_epochs: int | None = None) -> dict[str, Any]:
    """The sampled part of `params`, after checking every value against the study's space.

    A value the space fixes must be that value; a parameter the space does not have, or
    one that is inactive under the others, is an error. Parameters left out are sampled.
    The study's epoch cap is part of its space as the study runs it: see capped_epochs.
    """
    unknown = [key for key in params if key not in space.params]
    if unknown:
        raise SpaceError(f"{where}: parameter {unknown[0]!r} is not in the study's space "
                         f"(its parameters: {', '.join(space.params)})")
    values: dict[str, Any] = {"task": task}
    sampled: dict[str, Any] = {}
    for key in space.params:
        branch = space.active_branch(key, values)
        if branch is None:
            if key in params:
                raise SpaceError(f"{where}: {key} is inactive in the study's space with these values")
            continue
        if key not in params:
            if branch.fixed:
                values[key] = branch.value
            continue
        value = capped_epochs(branch, params[key], max_epochs) if key == "epochs" else params[key]
        if not branch.contains(value):
            cap = f", at most {max_epochs} run under --max-epochs" if key == "epochs" and max_epochs else ""
            raise SpaceError(f"{where}: {key} = {params[key]!r} is outside the study's space "
                             f"({branch_range(branch)}{cap})")
        values[key] = value
        if not branch.fixed:
            sampled[key] = value
    return sampled


def capped_epochs(branch: Branch, value: Any, max_epochs: int | None) -> Any:
    """The space's value that runs `value` epochs in a study capped at `max_epochs`.

    Under the cap every value of the space at or above it runs exactly the cap, so `epochs`
    equal to the cap (what `tuner best --format yaml` writes for a capped trial) is the
    space's smallest such value; anything else is left as given, to be checked as it is.
    """
    if max_epochs is None or not is_number(value) or value != max_epochs or branch.contains(value):
        return value
    candidates = [branch.low] if branch.type in ("int", "float") else list(branch.possible_values())
    above = [v for v in candidates if is_number(v) and v >= max_epochs]
    return min(above) if above else value


def enqueue(opened: OpenedStudy, path: str) -> dict[str, Any]:
    """Queue a configuration for the study's next free worker; the params it will run with."""
    study, config, name = opened.study, opened.config, opened.name
    task = "multi_label" if config.metric == "val_macro_f1" else "single_label"
    params = check_params(opened.space, read_params(path), task, f"--params {path}", config.max_epochs)
    queued = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    left = budget_left(study, config.n_trials) - queued
    if left <= 0:
        raise StudyError(f"study {name!r} has no budget left for another trial ({plural(config.n_trials, 'trial')}, "
                         f"{queued} already queued): raise it first with tuner extend")
    study.enqueue_trial(params, user_attrs={ENQUEUED_ATTR: True})
    return params


# --- tuner delete ----------------------------------------------------------------------

def describe_for_delete(opened: OpenedStudy) -> tuple[int, str | None]:
    """How many trials the study has and where its artifacts are: what the prompt shows."""
    return len(opened.study.get_trials(deepcopy=False)), opened.config.artifacts or None


def delete(opened: OpenedStudy) -> int:
    """Delete the study and its artifacts (checkpoints, best weights); the files removed."""
    config = opened.config
    removed = remove_study_artifacts(opened.study, opened.storage, config.artifacts) if config.artifacts else 0
    optuna.delete_study(study_name=opened.name, storage=opened.storage)
    return removed
