"""Reading a study's results: status, best trial, export and the dashboard."""

from __future__ import annotations

import csv
import errno
import io
import json
import socket
import time
from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from tuner.config import StudyConfig
from tuner.errors import OptionError, StudyError
from tuner.search import (
    CONFIG_ATTR,
    best_epoch_of,
    best_value_of,
    is_maximized,
    pruned_note,
    stored_config,
    study_best,
)
from tuner.service._artifact_store import open_artifact_store
from tuner.service._counts import trial_counts
from tuner.service._open import OpenedStudy, connect, load_any
from tuner.service._storage import StorageSettings, mask_url
from tuner.text import significant


def all_params(trial: FrozenTrial) -> dict[str, Any]:
    """Sampled params plus the space's fixed values: the trial's whole configuration."""
    return {**trial.params, **trial.user_attrs.get("fixed_params", {})}


def best_trial(study: optuna.Study) -> FrozenTrial:
    """The study's best trial (tuner.search.study_best: a pruned trial's best epoch counts)."""
    best = study_best(study)
    if best is None:
        raise StudyError(f"study {study.study_name!r} has no completed trial yet")
    return best


def study_status(storage_url: str, name: str | None) -> dict[str, Any]:
    with connect(StorageSettings(url=storage_url, read_only=True)) as storage:
        if name is not None:
            stored_config(storage, name)  # an unknown study: one clear error, listing the known ones
        names = [name] if name else optuna.get_all_study_names(storage=storage)
        return {"storage": mask_url(storage_url), "studies": [one_status(storage, n) for n in names]}


def one_status(storage, name: str) -> dict[str, Any]:
    # No sampler or pruner: status only reads (and a foreign study has no config to build them).
    study = load_any(storage, name)
    trials = study.get_trials(deepcopy=False)
    raw = study.user_attrs.get(CONFIG_ATTR)
    report: dict[str, Any] = {
        "name": name,
        "tuner": raw is not None,
        "metric": raw["metric"] if raw else None,
        "direction": raw["direction"] if raw else None,
        "n_trials": raw["n_trials"] if raw else None,
        **trial_counts(trials),
        "best": best_info(study),
        "running": [],
    }
    if raw is not None:
        config = StudyConfig.from_attr(raw)
        now = time.time()
        report["running"] = [running_info(t, config.grace_period, now) for t in trials
                             if t.state == TrialState.RUNNING]
    return report


def best_info(study: optuna.Study) -> dict[str, Any] | None:
    """The best trial's value and number; for a pruned one, also where it was pruned and its best epoch."""
    best = study_best(study)  # None: nothing counts yet, or a (foreign) multi-objective study
    if best is None:
        return None
    info = {"value": best_value_of(best, is_maximized(study)), "number": best.number}
    if best.state == TrialState.PRUNED:
        info.update(state="pruned", epochs_run=best.user_attrs.get("epochs_run"), best_epoch=best_epoch_of(best))
    return info


def running_info(trial: FrozenTrial, grace_period: int, now: float) -> dict[str, Any]:
    worker = trial.user_attrs.get("worker", "")
    host = worker.split(":")[0] if worker else None
    started = trial.datetime_start.timestamp() if trial.datetime_start else None
    # The last sign of life status can read: the trial's last epoch report, else its start.
    # (Optuna's own heartbeat has no public read.) A trial silent for longer than the grace
    # period and than twice its average epoch is flagged: its worker is probably gone.
    seen = trial.user_attrs.get("epoch_at", started)
    silent = None if seen is None else max(now - seen, 0.0)
    done = trial.user_attrs.get("epoch") or 0
    per_epoch = (seen - started) / done if done and started is not None else 0.0
    return {
        "number": trial.number,
        "worker": worker or None,
        "host": host,
        "device": trial.user_attrs.get("device"),
        "epoch": trial.user_attrs.get("epoch"),
        "epochs": trial.user_attrs.get("epochs"),
        "last_metric": trial.user_attrs.get("last_metric"),
        "started": trial.datetime_start.isoformat(timespec="seconds") if trial.datetime_start else None,
        "elapsed_s": None if started is None else round(max(now - started, 0.0), 1),
        "silent_s": None if silent is None else round(silent, 1),
        "stale": silent is not None and silent > max(grace_period, 2 * per_epoch),
    }


def epochs_that_ran(trial: FrozenTrial, max_epochs: int | None) -> dict[str, Any] | None:
    """The trial's epoch counts: sampled (or fixed), planned after the study's cap, trained."""
    params = all_params(trial)
    if "epochs" not in params or "epochs_run" not in trial.user_attrs:
        return None
    sampled = params["epochs"]
    planned = min(sampled, max_epochs) if max_epochs else sampled
    return {"sampled": sampled, "planned": planned, "trained": trial.user_attrs["epochs_run"],
            "stop_reason": trial.user_attrs.get("stop_reason")}


def epochs_note(epochs: dict[str, Any], best_epoch: int | None = None) -> str:
    """`2 (sampled 22, cut by --max-epochs 2)`, `3 of 5 (early stopped)` or just `5`; for a
    pruned trial, its best epoch: `2 (its best epoch; pruned at epoch 3 of 5)`."""
    notes = []
    if epochs["stop_reason"] == "pruned" and best_epoch is not None:
        text = str(best_epoch)
        notes.append(f"its best epoch; pruned at epoch {epochs['trained']} of {epochs['planned']}")
    else:
        text = str(epochs["trained"])
        if epochs["trained"] != epochs["planned"]:
            text += f" of {epochs['planned']}"
    if epochs["planned"] != epochs["sampled"]:
        notes.append(f"sampled {epochs['sampled']}, cut by --max-epochs {epochs['planned']}")
    if epochs["stop_reason"] == "early_stopped":
        notes.append("early stopped")
    return text + (f" ({'; '.join(notes)})" if notes else "")


def best_summary(opened: OpenedStudy) -> dict[str, Any]:
    """The best trial as it ran: `params.epochs` is the count trained (`epochs` has the rest).

    For a pruned best (`state: pruned`), `params.epochs` is its best epoch: what reproduces
    the value, as `tuner retrain` trains it."""
    name, config = opened.name, opened.config
    best = best_trial(opened.study)
    params = dict(sorted(all_params(best).items()))
    epochs = epochs_that_ran(best, config.max_epochs)
    pruned = best.state == TrialState.PRUNED
    if "epochs" in params and (pruned or epochs is not None):
        params["epochs"] = best_epoch_of(best) if pruned else epochs["trained"]
    return {
        "study": name,
        "metric": config.metric,
        "value": best_value_of(best, is_maximized(opened.study)),
        "number": best.number,
        **({"state": "pruned", "epochs_run": best.user_attrs.get("epochs_run")} if pruned else {}),
        "params": params,
        "best_epoch": best_epoch_of(best) if pruned else best.user_attrs.get("best_epoch"),
        "epochs": epochs,
    }


def best_as_space_yaml(opened: OpenedStudy) -> str:
    """A search-space file fixing every parameter at the value the best trial ran with: `--space` takes it.

    `epochs` is the count the trial planned after the study's cap (early stopping ends it
    where it ended before, and a schedule like cosine spans the same epochs), or a pruned
    best's best epoch (the pruner stopped it, so it had no end to repeat), and the settings
    carry the study's model, weights, image size and cap.
    """
    name, config = opened.name, opened.config
    best = best_trial(opened.study)
    params = all_params(best)
    epochs = epochs_that_ran(best, config.max_epochs)
    value = f"{config.metric} = {best_value_of(best, is_maximized(opened.study)):.4f}"
    if best.state == TrialState.PRUNED:
        # Its best epoch is what counted: the same params for that many epochs reproduce it.
        value += f" ({pruned_note(best)})"
        if "epochs" in params:
            params["epochs"] = best_epoch_of(best)
    elif epochs is not None:
        params["epochs"] = epochs["planned"]
    settings: dict[str, Any] = {"model": config.model, "weights": config.weights, "image_size": config.image_size}
    if config.max_epochs is not None:
        settings["max_epochs"] = config.max_epochs
    doc = {
        "description": f"Best trial {best.number} of study {name}: {value}.",
        "settings": settings,
        "params": {k: {"type": "fixed", "value": v} for k, v in sorted(params.items())},
    }
    return with_rounded_comments(yaml.safe_dump(doc, sort_keys=False))


def with_rounded_comments(text: str) -> str:
    """Each long float value of the YAML followed by a comment with it at 4 significant digits.

    The value itself keeps every digit: rounded, a value at the edge of its range could
    leave the range (high 0.0123456 shows as 0.01235), and `tuner enqueue` would refuse
    it; and the rerun would not be the configuration that ran.
    """
    lines = []
    for line in text.splitlines():
        key, _, scalar = line.partition("value: ")
        if scalar and not key.strip():
            value = yaml.safe_load(scalar)
            if isinstance(value, float) and significant(value) != scalar:
                line += f"  # {significant(value)}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def trial_record(trial: FrozenTrial) -> dict[str, Any]:
    return {
        "number": trial.number,
        "state": trial.state.name,
        "value": trial.value,
        "datetime_start": trial.datetime_start.isoformat() if trial.datetime_start else None,
        "datetime_complete": trial.datetime_complete.isoformat() if trial.datetime_complete else None,
        "params": all_params(trial),
        "intermediate_values": {str(k): v for k, v in sorted(trial.intermediate_values.items())},
        "user_attrs": dict(trial.user_attrs),
    }


def export_trials(opened: OpenedStudy, fmt: str) -> str:
    records = [trial_record(t) for t in opened.study.get_trials(deepcopy=False)]
    if fmt == "json":
        return json.dumps({"study": opened.name, "trials": records}, indent=2, default=str) + "\n"
    return records_to_csv(records)


def records_to_csv(records: list[dict[str, Any]]) -> str:
    """One row per trial; params and user attrs flattened into params_* / user_attrs_* columns."""
    params = sorted({k for r in records for k in r["params"]})
    attrs = sorted({k for r in records for k in r["user_attrs"]})
    header = ["number", "state", "value", "datetime_start", "datetime_complete",
              *(f"params_{p}" for p in params), *(f"user_attrs_{a}" for a in attrs), "intermediate_values"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for r in records:
        writer.writerow([
            r["number"], r["state"], "" if r["value"] is None else r["value"],
            r["datetime_start"] or "", r["datetime_complete"] or "",
            *(cell(r["params"].get(p)) for p in params),
            *(cell(r["user_attrs"].get(a)) for a in attrs),
            json.dumps(r["intermediate_values"]),
        ])
    return buffer.getvalue()


def cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str)
    return str(value)


def artifact_locations(storage, explicit: str | None) -> list[str]:
    """--artifacts if given, else every study's own store (each once, in study order)."""
    if explicit:
        return [explicit]
    locations: list[str] = []
    for name in optuna.get_all_study_names(storage=storage):
        try:
            config = stored_config(storage, name)
        except StudyError:
            continue
        if config.artifacts and config.artifacts not in locations:
            locations.append(config.artifacts)
    return locations


class StudyArtifactStores:
    """Several studies' artifact stores as the one store optuna-dashboard takes.

    Each study keeps its artifacts in the store its config names, and the dashboard served
    only the first study's: every other study's weights were listed but could not be opened.
    Artifact ids are UUIDs, so looking an id up in each store in turn finds the one store
    that holds it. An upload from the dashboard (which does not say for which study it
    writes) goes to the first store.
    """

    def __init__(self, stores: list) -> None:
        self.stores = stores

    def open_reader(self, artifact_id: str):
        return self._first(lambda store: store.open_reader(artifact_id), artifact_id)

    def write(self, artifact_id: str, content_body) -> None:
        self.stores[0].write(artifact_id, content_body)

    def remove(self, artifact_id: str) -> None:
        self._first(lambda store: store.remove(artifact_id), artifact_id)

    def _first(self, action, artifact_id: str):
        from optuna.artifacts.exceptions import ArtifactNotFound

        for store in self.stores:
            try:
                return action(store)
            except ArtifactNotFound:
                continue
        raise ArtifactNotFound(f"artifact {artifact_id} is in none of the studies' artifact stores")


def dashboard_store(storage, explicit: str | None):
    """The artifact store the dashboard serves: None when no study has one."""
    stores = [open_artifact_store(location) for location in artifact_locations(storage, explicit)]
    if len(stores) <= 1:
        return stores[0] if stores else None
    return StudyArtifactStores(stores)


def port_problem(host: str, port: int) -> OSError | None:
    """Why a server could not listen on host:port now, or None."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # As servers do: a port left in TIME_WAIT is free, one with a listener is not.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            return exc
    return None


def check_port(host: str, port: int) -> None:
    """Fail with one line before the server starts: it used to print a 52-line traceback."""
    problem = port_problem(host, port)
    if problem is None:
        return
    if problem.errno == errno.EADDRINUSE:
        free = next((p for p in range(port + 1, min(port + 100, 65536)) if port_problem(host, p) is None), None)
        hint = f" (try --port {free})" if free else ""
        raise OptionError(f"port {port} is in use{hint}")
    raise OptionError(f"--host {host} --port {port}: cannot listen there ({problem.strerror or problem})")


def serve_dashboard(storage_url: str, host: str, port: int, artifacts: str | None) -> None:
    import optuna_dashboard

    with connect(StorageSettings(url=storage_url)) as storage:
        try:
            optuna_dashboard.run_server(storage, host=host, port=port,
                                        artifact_store=dashboard_store(storage, artifacts))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            check_port(host, port)  # taken since the first check: the same one line
            raise OptionError(f"port {port} is in use") from None
