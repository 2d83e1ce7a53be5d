"""Using a model folder: the top classes of images (predict), and its metrics on labelled images (evaluate)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from tuner.errors import DataError
from tuner.shipping._calibration import BINS, activation, confidences, expected_calibration_error, reliability
from tuner.shipping._model_folder import load_model
from tuner.progress import Progress
from tuner.training import (
    IMAGE_EXTENSIONS,
    Runtime,
    load_labelled,
    make_runtime,
    place_model,
    read_image,
    resolve_device,
    to_device,
)
from tuner.text import plural

BATCH = 64


@dataclass(frozen=True)
class Prediction:
    image: str
    labels: tuple[tuple[str, float], ...]  # (class, probability), most probable first


def image_files(inputs: Sequence[str]) -> list[Path]:
    """The files given, and the image files under the folders given (recursively, hidden ones left out)."""
    files: list[Path] = []
    for given in inputs:
        path = Path(given).expanduser()
        if path.is_dir():
            found = sorted(
                Path(parent) / name
                for parent, dirs, names in os.walk(path, followlinks=True)
                if not any(part.startswith(".") for part in Path(parent).relative_to(path).parts)
                for name in names
                if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS
            )
            if not found:
                raise DataError(f"folder {given} has no image files ({', '.join(IMAGE_EXTENSIONS)})")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise DataError(f"{given}: no such file or folder")
    return files


def none_readable(inputs: Sequence[str], files: Sequence[Path]) -> str:
    """Why there is nothing to predict: what was given, how many image files it held, and that none is
    readable (a folder of one broken file used to read "the only file given is not a readable image")."""
    if len(inputs) == 1 and not Path(inputs[0]).expanduser().is_dir():
        return f"{inputs[0]}: not a readable image"
    where = f"folder {inputs[0]}" if len(inputs) == 1 else f"the {len(inputs)} paths given"
    found = plural(len(files), "image file")
    return f"found {found} in {where}, and {'it is not' if len(files) == 1 else 'none is'} a readable image"


class Runner:
    """A loaded model on a device, turning uint8 image batches into logits and probabilities."""

    def __init__(self, folder: str, runtime: Runtime, *, calibrated: bool = True) -> None:
        self.runtime = runtime
        # In the layout its inputs get (to_device): channels_last on a GPU, for both.
        self.model = place_model(load_model(folder, calibrated=calibrated), runtime)
        self.normalize = self.model.preprocess.normalize
        self.size = self.model.preprocess.image_size

    @torch.no_grad()
    def logits(self, images: torch.Tensor, progress: Progress) -> torch.Tensor:
        out = []
        with progress.steps("images", len(images)) as advance:
            for start in range(0, len(images), BATCH):
                batch = self.normalize(images[start:start + BATCH])
                (batch,) = to_device((batch,), self.runtime)
                with self.runtime.autocast():
                    out.append(self.model(batch).float().cpu())
                advance(len(batch))
        return torch.cat(out) if out else torch.zeros(0, len(self.model.classes))

    def probabilities(self, images: torch.Tensor, progress: Progress) -> torch.Tensor:
        return activation(self.logits(images, progress), self.model.multilabel)


def decode(files: Sequence[Path], size: int) -> tuple[torch.Tensor, list[Path], list[Path]]:
    """(uint8 images, their files, unreadable files)."""
    images, kept, skipped = [], [], []
    for path in files:
        image = read_image(path, size)
        if image is None:
            skipped.append(path)
        else:
            images.append(image)
            kept.append(path)
    stacked = torch.stack(images) if images else torch.zeros(0, 3, size, size, dtype=torch.uint8)
    return stacked, kept, skipped


def predict(folder: str, inputs: Sequence[str], *, top_k: int, device: str = "auto",
            progress: Progress | None = None) -> tuple[list[Prediction], list[Path]]:
    """Top-k classes of each readable image (multi-label: every label at or above the threshold)."""
    runner = Runner(folder, make_runtime(resolve_device(device)))
    files = image_files(inputs)
    images, kept, skipped = decode(files, runner.size)
    if not kept:
        raise DataError(none_readable(inputs, files))
    probabilities = runner.probabilities(images, progress or Progress())
    classes = runner.model.classes
    predictions = []
    for path, row in zip(kept, probabilities):
        order = row.argsort(descending=True).tolist()
        if runner.model.multilabel:
            chosen = [i for i in order if row[i] >= runner.model.threshold]
        else:
            chosen = order[:top_k]
        predictions.append(Prediction(str(path), tuple((classes[i], float(row[i])) for i in chosen)))
    return predictions, skipped


def predictions_rows(predictions: Sequence[Prediction]) -> Iterator[tuple[str, int, str, float]]:
    """(image, rank, class, probability) per predicted class; a multi-label image with none gets one empty row."""
    for prediction in predictions:
        if not prediction.labels:
            yield prediction.image, 0, "", float("nan")
        for rank, (name, probability) in enumerate(prediction.labels, 1):
            yield prediction.image, rank, name, probability


# --- evaluate ---------------------------------------------------------------------------------


def evaluate_model(folder: str, source: str, *, device: str = "auto",
                   progress: Progress | None = None) -> dict[str, Any]:
    """Accuracy (or macro F1), per-class precision/recall/F1/support, the confusion matrix, and the
    expected calibration error before and after the model's temperature, with its reliability bins."""
    runner = Runner(folder, make_runtime(resolve_device(device)), calibrated=False)
    model = runner.model
    labelled = load_labelled(source, runner.size, model.classes, model.multilabel)
    logits = runner.logits(labelled.images, progress or Progress())
    # T > 0 leaves the argmax and the sign of every logit (the 0.5 threshold) as they were.
    probabilities = activation(logits, model.multilabel)
    if model.multilabel:
        report = multilabel_report(probabilities >= model.threshold, labelled.targets > 0.5, model.classes)
    else:
        report = single_label_report(probabilities.argmax(1), labelled.targets, model.classes)
    return {"model": str(folder), "data": source, "images": len(labelled.targets),
            "skipped": len(labelled.skipped), "skipped_files": [str(p) for p in labelled.skipped], **report,
            **calibration_report(logits, labelled.targets, model)}


def calibration_report(logits: torch.Tensor, targets: torch.Tensor, model) -> dict[str, Any]:
    """ECE (15 bins) and reliability bins of the raw logits and of logits / temperature."""
    temperature = torch.tensor(model.temperature if isinstance(model.temperature, list) else [model.temperature])
    before = confidences(activation(logits, model.multilabel), targets, model.multilabel)
    after = confidences(activation(logits / temperature, model.multilabel), targets, model.multilabel)
    return {"temperature": model.temperature, "ece_bins": BINS,
            "ece_before": expected_calibration_error(*before), "ece_after": expected_calibration_error(*after),
            "reliability": {"before": reliability(*before), "after": reliability(*after)}}


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else 0.0


def class_rows(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor, classes: Sequence[str]) -> list[dict]:
    rows = []
    for index, name in enumerate(classes):
        t, p, n = (float(x[index]) for x in (tp, fp, fn))
        precision, recall = ratio(t, t + p), ratio(t, t + n)
        rows.append({"class": name, "precision": precision, "recall": recall,
                     "f1": ratio(2 * precision * recall, precision + recall), "support": int(t + n)})
    return rows


def single_label_report(predicted: torch.Tensor, truth: torch.Tensor, classes: Sequence[str]) -> dict[str, Any]:
    size = len(classes)
    confusion = torch.bincount(truth * size + predicted, minlength=size * size).view(size, size)
    tp = confusion.diag()
    return {
        "metric": "accuracy",
        "value": float(tp.sum()) / max(len(truth), 1),
        "classes": class_rows(tp, confusion.sum(0) - tp, confusion.sum(1) - tp, classes),
        "confusion": confusion.tolist(),  # rows: true class, columns: predicted class
    }


def multilabel_report(predicted: torch.Tensor, truth: torch.Tensor, classes: Sequence[str]) -> dict[str, Any]:
    tp = (predicted & truth).sum(0)
    fp = (predicted & ~truth).sum(0)
    fn = (~predicted & truth).sum(0)
    tn = (~predicted & ~truth).sum(0)
    rows = class_rows(tp, fp, fn, classes)
    # As in training (tuner.training.macro_f1): a label absent and never predicted counts 1.
    f1 = [1.0 if row["support"] == 0 and float(fp[i]) == 0 else row["f1"] for i, row in enumerate(rows)]
    return {
        "metric": "macro_f1",
        "value": sum(f1) / len(f1),
        "classes": rows,
        # Per label: [[TN, FP], [FN, TP]], as sklearn's multilabel_confusion_matrix.
        "confusion": [[[int(tn[i]), int(fp[i])], [int(fn[i]), int(tp[i])]] for i in range(len(classes))],
    }


def confusion_png(report: dict[str, Any], path: Path) -> Path:
    """A labelled confusion matrix (single-label) or one row of TN/FP/FN/TP per label (multi-label)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = [row["class"] for row in report["classes"]]
    if report["metric"] == "accuracy":
        counts = np.array(report["confusion"])
        xlabels, ylabels, title = names, names, "Confusion matrix (rows: true class, columns: predicted)"
        xlabel, ylabel = "predicted", "true"
        shade = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    else:
        counts = np.array([[c[0][0], c[0][1], c[1][0], c[1][1]] for c in report["confusion"]])
        xlabels, ylabels, title = ["TN", "FP", "FN", "TP"], names, "Per-label outcomes at threshold 0.5"
        xlabel, ylabel = "outcome", "label"
        shade = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    side = max(4.0, 0.45 * len(ylabels) + 2)
    figure, axes = plt.subplots(figsize=(max(4.0, 0.45 * len(xlabels) + 3), side))
    axes.imshow(shade, cmap="Blues", vmin=0, vmax=1)
    axes.set_xticks(range(len(xlabels)), xlabels, rotation=45 if len(xlabels) > 6 else 0, ha="right"
                    if len(xlabels) > 6 else "center")
    axes.set_yticks(range(len(ylabels)), ylabels)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(f"{title}\n{report['metric']} = {report['value']:.4f} on {report['images']} images",
                   fontsize=10)
    if counts.size <= 900:
        for (row, column), count in np.ndenumerate(counts):
            axes.text(column, row, str(count), ha="center", va="center", fontsize=8,
                      color="white" if shade[row, column] > 0.5 else "black")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def reliability_png(report: dict[str, Any], path: Path) -> Path:
    """The reliability diagram: accuracy against confidence per bin, before and after the temperature."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(5.5, 5.0))
    width = 1 / report["ece_bins"]
    for key, color, shift in (("before", "tab:orange", -0.25), ("after", "tab:blue", 0.25)):
        rows = [row for row in report["reliability"][key] if row["count"]]
        axes.bar([(row["low"] + row["high"]) / 2 + shift * width for row in rows],
                 [row["accuracy"] for row in rows], width=width / 2, color=color, edgecolor="black", linewidth=0.4,
                 label=f"{key}: ECE {report[f'ece_{key}']:.4f}")
    axes.plot([0, 1], [0, 1], "--", color="gray", label="perfectly calibrated")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1)
    what = "label decisions" if report["metric"] == "macro_f1" else "top class"
    axes.set_xlabel(f"confidence ({what}, {report['ece_bins']} bins)")
    axes.set_ylabel("accuracy")
    axes.set_title(f"Reliability: temperature {report['temperature']}, {report['images']} images", fontsize=10)
    axes.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
