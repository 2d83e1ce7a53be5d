"""Typed errors that library code raises and the CLI turns into `Error: ...` lines."""

from __future__ import annotations


class TunerError(Exception):
    """Base class of every error a user can cause; the CLI prints it without a traceback."""

    exit_code = 1


class SpaceError(TunerError):
    """A search-space file is unreadable or invalid."""


class DataError(TunerError):
    """A data source is missing, empty or malformed."""


class ModelError(TunerError):
    """A model name is unknown or its weights cannot be had."""


class StorageError(TunerError):
    """The study storage cannot be reached or its URL is malformed."""


class StudyError(TunerError):
    """A study is missing, or its stored config conflicts with the one given."""


class DeviceError(TunerError):
    """A requested device (or GPU index) is not available."""


class OptionError(TunerError):
    """Command-line options that cannot be used together."""
