"""From the best trial to a model in use: `tuner retrain`, the model folder, load_model, TorchScript,
`tuner predict` and `tuner evaluate`, end to end on a study made here (digits at 16 px) and on
model folders whose head is set by hand, so that every probability is known in advance."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
import torchvision
from PIL import Image

from conftest import cli_invoke as invoke, run_head_only_study
from tuner.shipping._model_folder import ModelInfo, plain_build_code, plain_state_dict, write_folder
from tuner.training._models import IMAGENET_MEAN, IMAGENET_STD, ModelSpec, build_model
from tuner.service._results import all_params

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DIGITS = 1797




def digit_images(folder: Path, digits=(3, 7), per_class: int = 4) -> Path:
    """Real digits images (8x8, scaled) in one subfolder per class, plus one corrupt file."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    for digit in digits:
        (folder / str(digit)).mkdir(parents=True, exist_ok=True)
        picks = np.flatnonzero(bunch.target == digit)[:per_class]
        for n, index in enumerate(picks):
            Image.fromarray((bunch.images[index] * 15).astype(np.uint8)).save(folder / str(digit) / f"{n}.png")
    (folder / str(digits[0]) / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot an image")
    return folder


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """A 2-trial study, then `retrain --include-val --export torchscript` of its best trial."""
    root = tmp_path_factory.mktemp("shipped")
    url = run_head_only_study(root, "s")
    out = root / "model"
    result = invoke(["retrain", "--study", "s", "--storage", url, "--out", str(out), "--include-val",
                     "--export", "torchscript", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    best = optuna.load_study(study_name="s", storage=url).best_trial
    return root, url, out, best, result


def test_retrain_include_val_trains_the_best_epochs_on_train_plus_val_less_a_calibration_slice(shipped):
    root, url, out, best, result = shipped
    doc = json.loads((out / "model.json").read_text())
    epochs = best.user_attrs["best_epoch"]
    # 20% of val (360 images: 20% of each digit's) stays out of training to fit the temperature.
    held = doc["calibration"]["images"]
    assert held == 72
    assert result.stdout == (
        f"trained resnet18 for {epochs} epoch{'s' if epochs != 1 else ''} on {DIGITS - held} images: "
        f"val_accuracy = {doc['value']:.4f} (held-out 20% of val); "
        f"wrote {out} (weights.pt, model.json, README.md, model.torchscript.pt)\n")
    # Progress as it goes, on stderr: what it trains, one line per epoch, then the temperature.
    lines = result.stderr.splitlines()
    assert lines[0] == (f"retraining trial {best.number} of study s: resnet18, {epochs} epoch"
                        f"{'s' if epochs != 1 else ''} on train+val ({DIGITS - held} images)")
    assert [re.sub(r"=\d\.\d{4}$", "=X", line) for line in lines[1:-1]] == [
        f"epoch {e}/{epochs} val_accuracy=X" for e in range(1, epochs + 1)]
    calibration = doc["calibration"]
    assert lines[-1] == (f"temperature {doc['temperature']} fitted on a held-out 20% of val (72 images, left out "
                         f"of training): expected calibration error {calibration['ece_before']:.4f} -> "
                         f"{calibration['ece_after']:.4f}")
    assert calibration["temperature"] == doc["temperature"] and calibration["nll_after"] <= calibration["nll_before"]
    assert (doc["epochs"], doc["epochs_run"], doc["weights_epoch"]) == (epochs, epochs, epochs)
    assert doc["include_val"] is True and doc["train_images"] == DIGITS - held
    assert doc["params"] == {**all_params(best), "epochs": epochs}
    # The study's cache views (head-only trials train on cached features) and compile setting.
    assert doc["feature_cache"] is True and doc["compiled"] is False
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "model.json", "model.torchscript.pt",
                                                     "weights.pt"]


def test_model_json_describes_the_model_its_inputs_and_where_it_came_from(shipped):
    _, _, out, best, _ = shipped
    doc = json.loads((out / "model.json").read_text())
    assert {k: doc[k] for k in ("format", "model", "kind", "head", "classes", "task", "threshold",
                                "image_size", "mean", "std", "metric", "study", "trial", "trial_value",
                                "weights_file", "torchscript_file")} == {
        "format": "tuner-model/1", "model": "resnet18", "kind": "torchvision", "head": "fc",
        "classes": [str(i) for i in range(10)], "task": "single_label", "threshold": None, "image_size": 16,
        "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "metric": "val_accuracy", "study": "s",
        "trial": best.number, "trial_value": best.value, "weights_file": "weights.pt",
        "torchscript_file": "model.torchscript.pt"}


def test_the_weights_load_into_plain_torchvision_resnet18(shipped):
    """They used to fail with Unexpected key(s) "fc.1.weight"."""
    _, _, out, _, _ = shipped
    model = torchvision.models.resnet18(num_classes=10)
    result = model.load_state_dict(torch.load(out / "weights.pt", weights_only=True))
    assert not result.missing_keys and not result.unexpected_keys


@pytest.mark.parametrize("name", ["resnet18", "squeezenet1_0", "googlenet", "mobilenet_v3_small",
                                  "efficientnet_lite0", "timm:resnet18", "timm:mobilenetv3_small_050"])
def test_plain_state_dict_fits_the_architecture_the_readme_builds(name):
    built = build_model(ModelSpec(name=name, weights="none", num_classes=3, dropout=0.2))
    built.model.get_submodule(built.head_name)[1].bias.data.normal_()  # a head that is not the default init
    info = ModelInfo(model=name, head=built.head_name, classes=("a", "b", "c"), multilabel=False, image_size=32,
                     mean=IMAGENET_MEAN, std=IMAGENET_STD, doc={})
    namespace: dict = {}
    module, line = plain_build_code(info)
    exec(f"import {module}\n{line}", namespace)
    plain = namespace["model"]
    plain.load_state_dict(plain_state_dict(built.model.state_dict(), built.head_name))  # strict
    built.model.eval(), plain.eval()
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(built.model(images), plain(images), atol=1e-5)


def test_load_model_gives_an_eval_module_with_classes_and_preprocessing(shipped):
    import tuner

    _, _, out, _, _ = shipped
    model = tuner.load_model(out)
    assert isinstance(model, torchvision.models.ResNet) and not model.training
    assert model.classes == [str(i) for i in range(10)] and model.multilabel is False
    assert model.info["study"] == "s"
    # The extras stay out of the module: its state dict is the weights file's, key for key.
    assert model.state_dict().keys() == torch.load(out / "weights.pt", weights_only=True).keys()
    image = Image.fromarray((np.arange(64).reshape(8, 8) * 4).astype(np.uint8), "L")
    x = model.preprocess(image)
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32
    scripted = torch.jit.load(str(out / "model.torchscript.pt"))
    with torch.no_grad():
        raw = torch.from_numpy(np.array(image.convert("RGB").resize((16, 16), Image.Resampling.BILINEAR)))
        unit = raw.permute(2, 0, 1).float().div(255).unsqueeze(0)
        assert torch.allclose(model(x.unsqueeze(0)), scripted(unit), atol=1e-4)


def python_without_tuner() -> list[str]:
    """A Python that finds torch but not tuner: isolated (-I), no site processing (-S, so the
    editable install's finder is not loaded), with the site-packages folders put back by hand."""
    folders = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *site.getsitepackages()}
    setup = "import sys; sys.path[:0] = " + repr(sorted(folders)) + "\n"
    return [sys.executable, "-I", "-S", "-c", setup]


def run_without_tuner(code: str, cwd: Path) -> subprocess.CompletedProcess:
    command = python_without_tuner()
    command[-1] += "try:\n    import tuner\nexcept ImportError:\n    pass\nelse:\n    raise SystemExit('tuner importable')\n" + code
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_torchscript_file_loads_in_a_fresh_process_without_tuner(shipped, tmp_path):
    _, _, out, _, _ = shipped
    code = (
        "import json, torch\n"
        "extra = {'model.json': ''}\n"
        f"model = torch.jit.load({str(out / 'model.torchscript.pt')!r}, _extra_files=extra)\n"
        "logits = model(torch.rand(2, 3, 16, 16))\n"
        "print(tuple(logits.shape), json.loads(extra['model.json'])['classes'][-1])\n"
    )
    done = run_without_tuner(code, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "(2, 10) 9\n"


def readme_blocks(readme: str) -> dict[str, str]:
    sections = re.findall(r"^## (.+?)\n.*?```python\n(.*?)```", readme, re.S | re.M)
    return dict(sections)


def test_readme_snippets_load_the_model_with_and_without_tuner(shipped, tmp_path):
    _, _, out, _, _ = shipped
    blocks = readme_blocks((out / "README.md").read_text())
    assert sorted(blocks) == ["TorchScript (torch only)", "With tuner", "Without tuner"]
    Image.new("RGB", (20, 20), (200, 10, 10)).save(tmp_path / "image.jpg")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    with_tuner = subprocess.run([sys.executable, "-c", blocks["With tuner"]], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=300)
    without = run_without_tuner(blocks["Without tuner"], tmp_path)
    assert with_tuner.returncode == 0, with_tuner.stderr
    assert without.returncode == 0, without.stderr
    shown = [json.loads(p.stdout.replace("'", '"')) for p in (with_tuner, without)]
    assert list(shown[0]) == [str(i) for i in range(10)]
    # Both ways give the same probabilities (PIL and torchvision resize alike for an RGB image).
    assert np.allclose(list(shown[0].values()), list(shown[1].values()), atol=1e-3)
    script = run_without_tuner(blocks["TorchScript (torch only)"], tmp_path)
    assert script.returncode == 0, script.stderr


# --- predict and evaluate on hand-set models ----------------------------------------------------

def handmade_model(folder: Path, classes: list[str], bias: list[float], *, multilabel: bool = False) -> Path:
    """A resnet18 folder whose head ignores the image: its logits are `bias`, whatever the input."""
    built = build_model(ModelSpec(name="resnet18", weights="none", num_classes=len(classes)))
    with torch.no_grad():
        built.head[1].weight.zero_()
        built.head[1].bias.copy_(torch.tensor(bias))
    doc = {"model": "resnet18", "kind": "torchvision", "head": built.head_name, "classes": classes,
           "task": "multi_label" if multilabel else "single_label", "image_size": 16,
           "mean": list(built.mean), "std": list(built.std), "metric": "val_accuracy", "value": 0.5,
           "study": "hand", "trial": 0}
    write_folder(folder, built.model.state_dict(), doc, torchscript=False)
    return folder


def some_images(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for n in range(count):
        Image.new("L", (10, 12), 30 * n).save(folder / f"{n}.png")
        paths.append(folder / f"{n}.png")
    return paths


def softmax(values: list[float]) -> list[float]:
    return torch.tensor(values).softmax(0).tolist()


def test_predict_prints_the_top_k_classes_of_each_image_as_csv(tmp_path):
    model = handmade_model(tmp_path / "m", ["cat", "dog", "fox"], [0.0, 2.0, 1.0])
    a, b = some_images(tmp_path / "in", 2)
    result = invoke(["predict", "--model", str(model), str(a), str(b), "--top-k", "2", "--format", "csv",
                     "--device", "cpu"])
    assert result.exit_code == 0, result.output
    p = softmax([0.0, 2.0, 1.0])
    assert result.stdout == (
        "image,rank,class,probability\n"
        f"{a},1,dog,{p[1]:.6f}\n{a},2,fox,{p[2]:.6f}\n{b},1,dog,{p[1]:.6f}\n{b},2,fox,{p[2]:.6f}\n")


def test_predict_takes_a_folder_skips_unreadable_files_and_prints_json(tmp_path):
    model = handmade_model(tmp_path / "m", ["cat", "dog"], [1.0, 0.0])
    images = some_images(tmp_path / "in" / "sub", 2)
    (tmp_path / "in" / "broken.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "in" / ".hidden.png").write_bytes(b"skipped silently: hidden")
    result = invoke(["predict", "--model", str(model), str(tmp_path / "in"), "--top-k", "5", "--format", "json",
                     "--device", "cpu"])
    assert result.exit_code == 0, result.output
    p = softmax([1.0, 0.0])
    records = json.loads(result.stdout)
    assert [r["image"] for r in records] == [str(i) for i in images]
    assert records[0]["predictions"] == [{"class": "cat", "probability": pytest.approx(p[0], abs=1e-6)},
                                         {"class": "dog", "probability": pytest.approx(p[1], abs=1e-6)}]
    assert result.stderr == f"Warning: skipped 1 unreadable file: {tmp_path / 'in' / 'broken.jpg'}\n"


def test_predict_multilabel_prints_every_label_above_the_threshold(tmp_path):
    # sigmoid: 0.95, 0.05, 0.62 -> "a" and "c", most probable first; then a model with none above.
    model = handmade_model(tmp_path / "m", ["a", "b", "c"], [3.0, -3.0, 0.5], multilabel=True)
    none = handmade_model(tmp_path / "none", ["a", "b"], [-1.0, -2.0], multilabel=True)
    (image,) = some_images(tmp_path / "in", 1)
    result = invoke(["predict", "--model", str(model), str(image), "--top-k", "1", "--format", "csv",
                     "--device", "cpu"])
    assert result.exit_code == 0, result.output
    s = torch.tensor([3.0, 0.5]).sigmoid().tolist()
    assert result.stdout == f"image,rank,class,probability\n{image},1,a,{s[0]:.6f}\n{image},2,c,{s[1]:.6f}\n"
    table = invoke(["predict", "--model", str(none), str(image), "--device", "cpu"])
    assert table.exit_code == 0, table.output
    assert "(no label above 0.5)" in table.stdout


@pytest.mark.parametrize("args, message", [
    (["--model", "{tmp}/absent", "{tmp}/x.png"], "Error: --model {tmp}/absent: no such folder "
                                                 "(make one with tuner retrain --out {tmp}/absent)"),
    (["--model", "{tmp}", "{tmp}/x.png"], "Error: --model {tmp}: no model.json there "
                                          "(not a folder written by tuner retrain)"),
    (["--model", "{tmp}/m", "{tmp}/nothing.png"], "Error: {tmp}/nothing.png: no such file or folder"),
    (["--model", "{tmp}/m", "{tmp}/empty"], "Error: folder {tmp}/empty has no image files "
                                            "(.png, .jpg, .jpeg, .bmp, .gif, .webp, .tif, .tiff)"),
    (["--model", "{tmp}/m", "{tmp}/m/model.json"], "Error: {tmp}/m/model.json: not a readable image"),
    (["--model", "{tmp}/m", "{tmp}/broken"], "Error: found 3 image files in folder {tmp}/broken, and none is a "
                                             "readable image"),
    (["--model", "{tmp}/m", "{tmp}/one"], "Error: found 1 image file in folder {tmp}/one, and it is not a "
                                          "readable image"),
    (["--model", "{tmp}/m", "{tmp}/one", "{tmp}/broken"], "Error: found 4 image files in the 2 paths given, and "
                                                          "none is a readable image"),
])
def test_predict_errors_are_one_line(tmp_path, args, message):
    handmade_model(tmp_path / "m", ["cat", "dog"], [1.0, 0.0])
    (tmp_path / "empty").mkdir()
    for folder, count in (("broken", 3), ("one", 1)):  # image files that are not images
        (tmp_path / folder).mkdir()
        for i in range(count):
            (tmp_path / folder / f"{i}.jpg").write_bytes(b"not a jpeg")
    result = invoke(["predict", *(a.format(tmp=tmp_path) for a in args), "--device", "cpu"])
    assert (result.exit_code, result.stderr) == (1, message.format(tmp=tmp_path) + "\n")


def test_evaluate_reports_accuracy_per_class_metrics_and_a_confusion_matrix(tmp_path):
    # Always "dog": 3 of 5 right; cat never predicted; fox absent from the data.
    model = handmade_model(tmp_path / "m", ["cat", "dog", "fox"], [0.0, 2.0, 1.0])
    some_images(tmp_path / "test" / "cat", 2)
    some_images(tmp_path / "test" / "dog", 3)
    (tmp_path / "test" / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    plot = tmp_path / "cm.png"
    result = invoke(["evaluate", "--model", str(model), "--data", str(tmp_path / "test"), "--format", "json",
                     "--confusion-matrix", str(plot), "--reliability-diagram", str(tmp_path / "r.png"),
                     "--device", "cpu"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["metric"], report["value"], report["images"], report["skipped"]) == ("accuracy", 0.6, 5, 1)
    assert report["classes"] == [
        {"class": "cat", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2},
        {"class": "dog", "precision": 0.6, "recall": 1.0, "f1": pytest.approx(0.75), "support": 3},
        {"class": "fox", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}]
    assert report["confusion"] == [[0, 2, 0], [0, 3, 0], [0, 0, 0]]
    # Every image in one bin at confidence p(dog), right 3 times of 5; no temperature in the folder (T = 1).
    p = softmax([0.0, 2.0, 1.0])[1]
    assert (report["temperature"], report["ece_bins"]) == (1.0, 15)
    assert report["ece_before"] == report["ece_after"] == pytest.approx(abs(0.6 - p), abs=1e-6)
    assert (tmp_path / "r.png").read_bytes()[:8] == PNG_MAGIC
    assert report["confusion_matrix_png"] == str(plot)
    assert result.stderr == f"Warning: skipped 1 unreadable file: {tmp_path / 'test' / 'dog' / 'broken.png'}\n"
    assert plot.read_bytes()[:8] == PNG_MAGIC
    with Image.open(plot) as image:
        assert image.size[0] >= 400 and image.size[1] >= 400


def test_evaluate_table_and_multilabel_macro_f1_from_a_csv(tmp_path):
    # Predicts {a, c} for every image (sigmoid 0.95, 0.05, 0.62).
    model = handmade_model(tmp_path / "m", ["a", "b", "c"], [3.0, -3.0, 0.5], multilabel=True)
    images = some_images(tmp_path / "imgs", 3)
    manifest = tmp_path / "test.csv"
    manifest.write_text("path,label\n" + "".join(
        f"imgs/{p.name},{label}\n" for p, label in zip(images, ["a;c", "a", "b"])))
    result = invoke(["evaluate", "--model", str(model), "--data", str(manifest), "--device", "cpu",
                     "--confusion-matrix", str(tmp_path / "cm.png"), "--reliability-diagram", str(tmp_path / "r.png")])
    assert result.exit_code == 0, result.output
    # a: tp 2 fp 1 -> p 2/3 r 1 f1 0.8; b: tp 0 fn 1 -> 0; c: tp 1 fp 2 -> p 1/3 r 1 f1 0.5.
    lines = result.stdout.splitlines()
    assert lines[0] == f"macro_f1 {(0.8 + 0 + 0.5) / 3:.4f} on 3 images"
    rows = [line.split() for line in lines[1:-2] if line.strip() and not set(line.strip()) <= {"─"}]
    assert rows == [["class", "precision", "recall", "f1", "support"],
                    ["a", "0.6667", "1.0000", "0.8000", "2"], ["b", "0.0000", "0.0000", "0.0000", "1"],
                    ["c", "0.3333", "1.0000", "0.5000", "1"]]
    # 9 yes/no decisions: a (yes) and b (no) at confidence sigmoid(3), right 4 times of 6 (bin 15);
    # c (yes) at sigmoid(0.5), right once of 3 (bin 10). No temperature in the folder: T = 1.
    high, low = torch.tensor([3.0, 0.5]).sigmoid().double().tolist()
    ece = (6 * abs(4 / 6 - high) + 3 * abs(1 / 3 - low)) / 9
    assert lines[-2] == (f"expected calibration error (15 bins): {ece:.4f} before, {ece:.4f} after "
                         "temperature 1.0")
    assert lines[-1] == f"wrote {tmp_path / 'cm.png'}, {tmp_path / 'r.png'}"


@pytest.mark.parametrize("make, message", [
    (lambda t: (t / "test" / "wolf").mkdir(parents=True), "Error: data folder {tmp}/test: label(s) 'wolf' are "
                                                          "not among the model's classes ('cat', 'dog')"),
    (lambda t: (t / "test").mkdir(), "Error: data folder {tmp}/test: no class folders "
                                     "(expected one subfolder per class)"),
])
def test_evaluate_rejects_data_the_model_cannot_label(tmp_path, make, message):
    model = handmade_model(tmp_path / "m", ["cat", "dog"], [1.0, 0.0])
    make(tmp_path)
    result = invoke(["evaluate", "--model", str(model), "--data", str(tmp_path / "test"), "--device", "cpu"])
    assert (result.exit_code, result.stderr) == (1, message.format(tmp=tmp_path) + "\n")


def test_predict_and_evaluate_the_retrained_digits_model(shipped, tmp_path):
    _, _, out, _, _ = shipped
    folder = digit_images(tmp_path / "digits")
    evaluated = invoke(["evaluate", "--model", str(out), "--data", str(folder), "--format", "json",
                        "--confusion-matrix", str(tmp_path / "cm.png"), "--reliability-diagram",
                        str(tmp_path / "reliability.png"), "--device", "cpu"])
    assert evaluated.exit_code == 0, evaluated.output
    report = json.loads(evaluated.stdout)
    assert (report["images"], report["skipped"]) == (8, 1)
    predicted = invoke(["predict", "--model", str(out), str(folder), "--top-k", "1", "--format", "csv",
                        "--device", "cpu"])
    assert predicted.exit_code == 0, predicted.output
    rows = list(csv.DictReader(io.StringIO(predicted.stdout)))
    assert len(rows) == 8
    right = sum(Path(r["image"]).parent.name == r["class"] for r in rows)
    assert report["value"] == right / 8
