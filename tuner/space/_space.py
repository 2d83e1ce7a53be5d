"""Search-space files: find a given or shipped file, read it, parse its YAML and validate it."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from tuner.errors import SpaceError

# The space itself is defined in _model.py and a document's checks are in _validator.py.
from tuner.space._model import SearchSpace
from tuner.space._validator import validate


def shipped_spaces_dir() -> Path:
    """The `search_spaces/` folder shipped beside the package (overridable for deployments)."""
    override = os.environ.get("TUNER_SPACES_DIR")
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[2] / "search_spaces"


def shipped_spaces() -> list[Path]:
    folder = shipped_spaces_dir()
    return sorted(folder.glob("*.yaml")) if folder.is_dir() else []


def resolve_space(ref: str) -> Path:
    """A FILE path as given, or NAME of a shipped space (`default` -> search_spaces/default.yaml)."""
    path = Path(ref)
    if path.is_file():
        return path
    if path.suffix in ("", ".yaml", ".yml") and os.sep not in ref:
        shipped = shipped_spaces_dir() / f"{path.stem}.yaml"
        if shipped.is_file():
            return shipped
    names = ", ".join(p.stem for p in shipped_spaces()) or "none"
    raise SpaceError(f"no search space file or shipped space named {ref!r} (shipped: {names})")


def load_space(ref: str) -> SearchSpace:
    path = resolve_space(ref)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpaceError(f"{path.name}: cannot read file: {exc}") from None
    return parse_space(text, source=path.name, name=path.stem)


def parse_space(text: str, *, source: str, name: str) -> SearchSpace:
    """Parse and validate YAML text; `source` names the file in every error message."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpaceError(f"{source}: invalid YAML{where}: {problem}") from None
    return validate(doc, source=source, text=text, name=name)
