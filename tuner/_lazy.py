"""Lazy package APIs (PEP 562): a package's public names, each imported from its private module on first use."""

from __future__ import annotations

import importlib
import sys
from typing import Any, Callable, Mapping


def lazy_api(package: str, exports: Mapping[str, tuple[str, ...]]) -> tuple[
        Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """The module `__getattr__`, `__dir__` and `__all__` of `package`, whose public names are
    `exports` (private module -> the names it defines).

    Lazy because the read-only commands (status, best, export) import torch-free parts of
    packages whose other modules import torch: `import tuner.training` must cost nothing.
    """
    home = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str) -> Any:
        module = home.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        # Kept on the package: later lookups find it without calling here again.
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(home))

    return __getattr__, __dir__, sorted(home)
