"""What the data asks of the trainer: its task, and the name of the metric that scores it (no torch)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tuner.training._data import ImageData


def metric_name(multilabel: bool) -> str:
    return "val_macro_f1" if multilabel else "val_accuracy"


def task_of(data: ImageData) -> str:
    return "multi_label" if data.multilabel else "single_label"
