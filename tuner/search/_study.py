"""A study's stored config (user attrs), its creation marks, and its global budget of trials."""

from __future__ import annotations

import datetime
from typing import Any, Mapping

import optuna
from optuna.trial import TrialState

from tuner.config import StudyConfig
from tuner.errors import StudyError
from tuner.search._note import save_note
from tuner.search._warm_start import first_trials
from tuner.space import SearchSpace, parse_space

CONFIG_ATTR = "tuner_config"
CREATED_ATTR = "tuner_created"  # ISO time, UTC: Optuna keeps no creation time of its own


def study_space(config: StudyConfig) -> SearchSpace:
    """The study's space, parsed from the text stored in its config."""
    return parse_space(config.space_text, source=f"{config.space_name}.yaml", name=config.space_name)


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


def set_up_new_study(study: optuna.Study, config: StudyConfig, space: SearchSpace, note: str) -> None:
    """Store a just-created study's config, creation time and note, and enqueue its first trials."""
    study.set_user_attr(CONFIG_ATTR, config.to_attr())
    study.set_user_attr(CREATED_ATTR, datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    study.set_metric_names([config.metric])
    save_note(study, note)
    for params, attrs in first_trials(config, space)[: config.n_trials]:
        study.enqueue_trial(params, user_attrs=attrs)


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
