"""Study-level artifacts that optuna-dashboard lists under "Study Artifacts": the best model and the report."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Iterable, Sequence

import optuna
from optuna.artifacts import upload_artifact
from optuna.artifacts.exceptions import ArtifactNotFound

from tuner.search import study_best

# optuna's key for an artifact in the study's system attrs (optuna.artifacts._upload).
ATTR_PREFIX = "artifacts:"
BEST_MODEL = "best-model-trial-"
REPORT = "report-"


def listed(storage: optuna.storages.BaseStorage, study_name: str) -> dict[str, str]:
    """artifact id -> file name of the study's own (not its trials') artifacts still listed.

    optuna-dashboard deletes an artifact by setting its entry to JSON null (there is no
    public way to remove a system attr), so null entries are skipped here.
    """
    attrs = storage.get_study_system_attrs(storage.get_study_id_from_name(study_name))
    out = {}
    for key, value in attrs.items():
        meta = json.loads(value) if key.startswith(ATTR_PREFIX) and isinstance(value, str) else None
        if isinstance(meta, dict):
            out[meta["artifact_id"]] = meta["filename"]
    return out


def drop(storage: optuna.storages.BaseStorage, study_name: str, store, ids: Iterable[str]) -> None:
    """Remove artifacts from the store and the dashboard's list, as the dashboard's own delete does."""
    study_id = storage.get_study_id_from_name(study_name)
    for artifact_id in ids:
        try:
            store.remove(artifact_id)
        except ArtifactNotFound:
            pass  # another process removed it first
        storage.set_study_system_attr(study_id, ATTR_PREFIX + artifact_id, json.dumps(None))


def publish_best_model(study: optuna.Study, storage, number: int, artifact_id: str) -> None:
    """List trial `number`'s best weights (artifact `artifact_id`) as the study's best model.

    No second copy is uploaded: the study entry points at the trial's own weights file, so
    the store keeps only the best weights (the worker prunes the others' files). Entries of
    earlier bests are delisted. Two workers may finish new bests at once: each re-reads the
    best trial after writing its entry and keeps only that trial's, so the worse entry goes
    whichever order the writes and reads interleave in.
    """
    study_id = storage.get_study_id_from_name(study.study_name)
    # The entry optuna.artifacts.upload_artifact writes for a study, as optuna-dashboard reads it.
    meta = {"artifact_id": artifact_id, "filename": f"{BEST_MODEL}{number}.pt",
            "mimetype": "application/octet-stream", "encoding": None}
    storage.set_study_system_attr(study_id, ATTR_PREFIX + artifact_id, json.dumps(meta))
    best = study_best(study)
    keep = f"{BEST_MODEL}{best.number if best is not None else number}.pt"
    for stale, name in listed(storage, study.study_name).items():
        if name.startswith(BEST_MODEL) and name != keep:
            # Delisted only: the file is a trial's weights, which the worker's pruning removes.
            storage.set_study_system_attr(study_id, ATTR_PREFIX + stale, json.dumps(None))


def publish_report(study: optuna.Study, storage, store, files: Sequence[Path]) -> list[str]:
    """Upload the report's files (as report-NAME) and drop the report uploaded before."""
    before = [i for i, name in listed(storage, study.study_name).items() if name.startswith(REPORT)]
    ids = []
    with tempfile.TemporaryDirectory() as folder:
        for file in files:
            renamed = Path(folder) / f"{REPORT}{file.name}"
            renamed.write_bytes(file.read_bytes())
            ids.append(upload_artifact(artifact_store=store, file_path=str(renamed), study_or_trial=study))
    drop(storage, study.study_name, store, before)
    return ids


def describe(storage, study_name: str) -> list[dict[str, Any]]:
    return [{"id": i, "filename": name} for i, name in sorted(listed(storage, study_name).items(), key=lambda x: x[1])]
