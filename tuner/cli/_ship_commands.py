"""Commands that ship and use the final model: retrain, evaluate, predict, and the model names (models)."""

from __future__ import annotations

import json
from typing import Any

import click

from tuner.cli._group import closed_when_done
from tuner.cli._options import machine_options, storage_option, study_option
from tuner.config import default


@click.command()
@study_option("The study whose best trial is retrained")
@storage_option
@click.option("--out", required=True, type=click.Path(file_okay=False), metavar="DIR",
              help="Model folder to write: weights.pt, model.json, README.md.")
@click.option("--epochs", type=click.IntRange(min=1), metavar="N",
              help="Epochs to train (default: the best trial's best epoch), even where the space fixes epochs.")
@click.option("--include-val", is_flag=True,
              help="Train on train + val (the usual last step); the metric shown is then not held out.")
@click.option("--export", "exports", type=click.Choice(["torchscript"]), multiple=True,
              help="Also write model.torchscript.pt, which loads with torch alone.")
@click.option("--device", default=default("device"), show_default=True, metavar="auto|cpu|cuda|cuda:N|mps",
              help="auto picks CUDA, then MPS, then CPU.")
@click.option("--data", metavar="DIR|CSV", help="Where this machine finds the data (default: as stored).")
@click.option("--compile/--no-compile", "compile_model", default=None,
              help="torch.compile the network (default: as the best trial ran).")
@click.option("--cache-dir", metavar="DIR", help="Feature cache folder (default: ~/.cache/tuner/features).")
@click.option("--num-workers", type=click.IntRange(min=0), metavar="N",
              help="DataLoader worker processes (default: 4 on CUDA, 0 on CPU).")
@click.option("--quiet", "-q", is_flag=True, help="Only the final line.")
def retrain(**params: Any) -> None:
    """Train the final model with the best trial's parameters and write a self-describing model folder.

    \b
    Examples:
      tuner retrain --study s --out model                  # best epoch count, train split
      tuner retrain --study s --out model --include-val    # train + val, the usual last step
      tuner retrain --study s --out model --epochs 30 --export torchscript
    """
    from tuner.progress import progress_for
    from tuner.shipping._retrain import RetrainRequest, check_out, retrain as run_retrain
    from tuner.service._open import open_for_reading, require_existing_sqlite

    require_existing_sqlite(params["storage"])
    request = RetrainRequest(out=params["out"], epochs=params["epochs"], include_val=params["include_val"],
                             compile=params["compile_model"], torchscript="torchscript" in params["exports"])
    check_out(request.out)  # a bad --out fails before the study is read
    opened = closed_when_done(open_for_reading(params["storage"], params["study"], machine=machine_options(params)))
    progress = progress_for(params["quiet"])
    say = (lambda line: None) if params["quiet"] else (lambda line: click.echo(line, err=True))
    with progress.running():
        result = run_retrain(opened, request, progress=progress, say=say)
    doc = result.doc
    files = ", ".join(f for f in ("weights.pt", "model.json", "README.md", doc["torchscript_file"]) if f)
    click.echo(f"trained {doc['model']} for {doc['epochs_run']} epoch{'s' if doc['epochs_run'] != 1 else ''} "
               f"on {doc['train_images']} images: {doc['metric']} = {doc['value']:.4f} ({doc['value_on']}); "
               f"wrote {result.folder} ({files})")


@click.command("evaluate")
@click.option("--model", "folder", required=True, type=click.Path(file_okay=False), metavar="DIR",
              help="A model folder written by tuner retrain.")
@click.option("--data", required=True, metavar="DIR|CSV",
              help="Labelled images: a folder with one subfolder per class, or a CSV manifest (path,label).")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True,
              help="A readable report, or one JSON object for scripts.")
@click.option("--confusion-matrix", "plot", type=click.Path(dir_okay=False), default="confusion_matrix.png",
              show_default=True, metavar="FILE", help="Where to write the confusion-matrix PNG.")
@click.option("--reliability-diagram", "reliability_plot", type=click.Path(dir_okay=False),
              default="reliability_diagram.png", show_default=True, metavar="FILE",
              help="Where to write the reliability-diagram PNG (calibration before and after the temperature).")
@click.option("--device", default=default("device"), show_default=True, metavar="auto|cpu|cuda|cuda:N|mps",
              help="auto picks CUDA, then MPS, then CPU.")
def evaluate_command(folder: str, data: str, fmt: str, plot: str, reliability_plot: str, device: str) -> None:
    """Accuracy (macro F1 for multi-label models), per-class precision/recall/F1, a confusion matrix, and the
    expected calibration error before and after the model's temperature, with a reliability diagram.

    \b
    Examples:
      tuner evaluate --model model --data path/to/test          # one subfolder per class
      tuner evaluate --model model --data test.csv --format json
    """
    from pathlib import Path

    from tuner.shipping._inference import confusion_png, evaluate_model, reliability_png
    from tuner.progress import progress_for
    from tuner.cli._render import evaluation_text

    progress = progress_for(fmt == "json")
    with progress.running():
        report = evaluate_model(folder, data, device=device, progress=progress)
    if report["skipped"]:
        warn_skipped(report["skipped"], report["skipped_files"])
    written = confusion_png(report, Path(plot))
    diagram = reliability_png(report, Path(reliability_plot))
    if fmt == "json":
        click.echo(json.dumps({**report, "confusion_matrix_png": str(written),
                               "reliability_diagram_png": str(diagram)}, indent=2))
    else:
        click.echo(evaluation_text(report))
        click.echo(f"wrote {written}, {diagram}")


@click.command()
@click.option("--model", "folder", required=True, type=click.Path(file_okay=False), metavar="DIR",
              help="A model folder written by tuner retrain.")
@click.argument("images", nargs=-1, required=True, metavar="IMAGE...|FOLDER")
@click.option("--top-k", type=click.IntRange(min=1), default=3, show_default=True, metavar="K",
              help="Classes shown per image (multi-label models show every label above 0.5 instead).")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True,
              help="A readable table, CSV rows (image,rank,class,probability) or JSON.")
@click.option("--device", default=default("device"), show_default=True, metavar="auto|cpu|cuda|cuda:N|mps",
              help="auto picks CUDA, then MPS, then CPU.")
def predict(folder: str, images: tuple[str, ...], top_k: int, fmt: str, device: str) -> None:
    """The most probable classes of each image, with their probabilities.

    \b
    Examples:
      tuner predict --model model photo.jpg other.png
      tuner predict --model model photos/ --top-k 1 --format csv > predictions.csv
    """
    from tuner.shipping._inference import predict as run_predict
    from tuner.progress import progress_for
    from tuner.cli._render import predictions_text

    progress = progress_for(False)
    with progress.running():
        predictions, skipped = run_predict(folder, images, top_k=top_k, device=device, progress=progress)
    if skipped:
        warn_skipped(len(skipped), skipped)
    click.echo(predictions_text(predictions, fmt), nl=False)


def warn_skipped(count: int, files) -> None:
    shown = ", ".join(str(f) for f in list(files)[:3]) + (", ..." if count > 3 else "")
    click.echo(f"Warning: skipped {count} unreadable file{'s' if count != 1 else ''}: {shown}", err=True)


@click.command()
@click.argument("pattern", required=False, metavar="[PATTERN]")
def models(pattern: str | None) -> None:
    """List the model names --model takes (optionally only those containing PATTERN).

    torchvision's classifiers, efficientnet_lite0, and timm's models as timm:NAME when timm
    is installed; --model also takes MODULE:FUNCTION, a function of yours that builds one.

    \b
    Examples:
      tuner models resnet
      tuner models timm:convnext
    """
    from tuner.training._models import available_models

    names = [name for name in available_models() if pattern is None or pattern in name]
    for name in names:
        click.echo(name)
    if not names:
        click.echo(f"no model name contains {pattern!r}")
