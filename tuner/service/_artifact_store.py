"""Where a study's artifacts live: a shared folder or s3://bucket/prefix, opened without torch."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from optuna.artifacts import FileSystemArtifactStore

from tuner.errors import StorageError
from tuner.service._storage import local_folder


def default_artifacts_dir(storage_url: str) -> str:
    """Beside a SQLite file (tuner.db -> tuner-artifacts/); workers elsewhere must pass --artifacts."""
    # Absolute even for sqlite:///relative.db: the path is stored in the study's config.
    return local_folder(storage_url, "artifacts") or str(Path("tuner-artifacts").resolve())


def open_artifact_store(location: str):
    """A local/shared folder, or s3://bucket/prefix through boto3."""
    if location.startswith("s3://"):
        from optuna.artifacts import Boto3ArtifactStore

        bucket, prefix = parse_s3(location)
        store = Boto3ArtifactStore(bucket)
        return PrefixedStore(store, prefix) if prefix else store
    path = Path(location)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"--artifacts {location}: cannot create the folder: {exc.strerror}") from None
    return FileSystemArtifactStore(path)


def parse_s3(location: str) -> tuple[str, str]:
    """s3://bucket/some/prefix/ -> ("bucket", "some/prefix"): where the objects go, inside the bucket."""
    bucket, _, prefix = location[len("s3://"):].partition("/")
    if not bucket:
        raise StorageError(f"--artifacts {location!r} names no bucket (s3://bucket or s3://bucket/prefix)")
    return bucket, prefix.strip("/")


class PrefixedStore:
    """An artifact store whose objects all live under `prefix/` of another store (Optuna's
    Boto3ArtifactStore knows only a bucket: s3://bucket/prefix used to write to the bucket's root)."""

    def __init__(self, store, prefix: str) -> None:
        self.store = store
        self.prefix = prefix

    def key(self, artifact_id: str) -> str:
        return f"{self.prefix}/{artifact_id}"

    def open_reader(self, artifact_id: str):
        return self.store.open_reader(self.key(artifact_id))

    def write(self, artifact_id: str, content_body) -> None:
        self.store.write(self.key(artifact_id), content_body)

    def remove(self, artifact_id: str) -> None:
        self.store.remove(self.key(artifact_id))


def safe_name(name: str) -> str:
    """A file-name-safe form of a study name that cannot climb out of the store (no '/', no '..')."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_")[:40] or "study"
    return f"{slug}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"


# The trial user attr naming its last checkpoint (tuner.service._checkpoints writes it).
CHECKPOINT_ATTR = "checkpoint"


def checkpoint_prefix(study_name: str) -> str:
    """What every checkpoint key of the study starts with: `tuner delete` finds them by it."""
    return f"ckpt-{safe_name(study_name)}"
