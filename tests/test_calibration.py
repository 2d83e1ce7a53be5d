"""Calibrated probabilities: the ECE on hand-checked cases, the temperature fit, and a real head-only digits
model whose temperature (fitted by `tuner retrain` on val) lowers the ECE on images the study never saw, and
survives load_model, TorchScript and `tuner evaluate`; a model folder from before calibration still loads."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import cli_invoke as invoke
from tuner.shipping._calibration import (
    calibrate,
    confidences,
    expected_calibration_error,
    fit_temperature,
    reliability,
    T_MIN,
)
from tuner.shipping._model_folder import load_model
from tuner.training._decode import image_to_tensor

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# One head-only configuration, trained few epochs on random-init features: underconfident, as in the issue.
HEAD_ONLY = """\
settings:
  model: resnet18
  image_size: 16
params:
  freeze: {type: fixed, value: head}
  optimizer: {type: fixed, value: adam}
  lr: {type: fixed, value: 0.01}
  batch_size: {type: fixed, value: 64}
  epochs: {type: fixed, value: 3}
  loss: {type: fixed, value: cross_entropy}
"""


# --- the ECE, by hand ----------------------------------------------------------------------------

@pytest.mark.parametrize("confidence, correct, expected", [
    # One bin (0.8667, 0.9333]: accuracy 1/2, mean confidence 0.9.
    ([0.9, 0.9], [True, False], 0.4),
    # Perfectly calibrated in two bins: 0.5 (bin 8) right once of two; 1.0 (bin 15) always right.
    ([0.5, 0.5, 1.0, 1.0], [True, False, True, True], 0.0),
    # Bin 11 (0.6667, 0.7333]: conf 0.7, acc 1 -> 0.3 * 2/4; bin 5 (0.2667, 0.3333]: conf 0.3, acc 0 -> 0.3 * 2/4.
    ([0.7, 0.7, 0.3, 0.3], [True, True, False, False], 0.3),
    # Bins 4, 7 and 14: |1 - 0.25| * 1/4 + |0 - 0.45| * 2/4 + |1 - 0.9| * 1/4.
    ([0.25, 0.45, 0.45, 0.9], [True, False, False, True], 0.75 / 4 + 0.45 / 2 + 0.1 / 4),
    # An upper edge belongs to its bin, (m-1)/15 < conf <= m/15: 1/3 is bin 5, with 0.3 (acc 0.5, conf 0.3167).
    ([1 / 3, 0.3], [True, False], abs(0.5 - (1 / 3 + 0.3) / 2)),
    ([], [], 0.0),
])
def test_expected_calibration_error_of_hand_checked_cases(confidence, correct, expected):
    ece = expected_calibration_error(torch.tensor(confidence, dtype=torch.float64), torch.tensor(correct,
                                                                                                dtype=torch.bool))
    assert ece == pytest.approx(expected, abs=1e-12)


def test_reliability_bins_are_15_equal_widths_with_counts_confidence_and_accuracy():
    rows = reliability(torch.tensor([0.95, 0.99, 0.1]), torch.tensor([True, False, True]))
    assert len(rows) == 15 and rows[0]["low"] == 0 and rows[-1]["high"] == 1
    assert rows[1] == {"low": 1 / 15, "high": 2 / 15, "count": 1, "confidence": pytest.approx(0.1),
                       "accuracy": 1.0}
    assert rows[14]["count"] == 2 and rows[14]["accuracy"] == 0.5
    assert [row["count"] for row in rows].count(0) == 13


def test_multilabel_confidence_is_each_label_decision():
    probabilities = torch.tensor([[0.9, 0.2], [0.4, 0.7]])
    confidence, correct = confidences(probabilities, torch.tensor([[1.0, 1.0], [0.0, 1.0]]), multilabel=True)
    assert confidence.tolist() == pytest.approx([0.9, 0.8, 0.6, 0.7])
    assert correct.tolist() == [True, False, True, True]


# --- fitting the temperature ---------------------------------------------------------------------

@pytest.mark.parametrize("multilabel", [False, True])
def test_fit_temperature_recovers_the_temperature_of_overconfident_logits(multilabel):
    """Labels drawn from softmax(z) (sigmoid(z)); the model says 3z: the NLL's minimum is at T = 3."""
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(4000, 5, generator=generator) * 2
    if multilabel:
        targets = (torch.rand(4000, 5, generator=generator) < z.sigmoid()).float()
    else:
        targets = torch.multinomial(z.softmax(1), 1, generator=generator).squeeze(1)
    assert float(fit_temperature(3 * z, targets, multilabel)) == pytest.approx(3.0, rel=0.08)
    calibration = calibrate(3 * z, targets, multilabel, "synthetic")
    assert calibration.nll_after < calibration.nll_before and calibration.ece_after < calibration.ece_before / 2


def test_a_validation_set_the_model_gets_all_right_keeps_a_finite_temperature():
    logits = torch.tensor([[4.0, 0.0], [0.0, 4.0]])
    # Its NLL falls for ever as T -> 0; the fit sharpens, and stops within the kept range.
    assert T_MIN <= float(fit_temperature(logits, torch.tensor([0, 1]), multilabel=False)) < 1


# --- a real head-only model ----------------------------------------------------------------------

def digits_folders(root: Path) -> tuple[Path, Path]:
    """The first 1000 real digits (8x8, scaled to 16 px by tuner) in class subfolders: every fourth
    in a held-out folder the study never sees, the others in the study's folder."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    for n, (image, digit) in enumerate(zip(bunch.images[:1000], bunch.target)):
        folder = root / ("held_out" if n % 4 == 0 else "study") / str(digit)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((image * 15).astype(np.uint8)).save(folder / f"{n}.png")
    return root / "study", root / "held_out"


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """One head-only trial of 3 epochs on the study folder, retrained (val held out) with TorchScript."""
    root = tmp_path_factory.mktemp("calibrated")
    study, held_out = digits_folders(root)
    (root / "space.yaml").write_text(HEAD_ONLY)
    url = f"sqlite:///{root / 'study.db'}"
    ran = invoke(["run", "--study", "c", "--space", str(root / "space.yaml"), "--data", str(study),
                  "--image-size", "16", "--weights", "none", "--n-trials", "1",
                  "--storage", url, "--device", "cpu", "--quiet"])
    assert ran.exit_code == 0, ran.output
    out = root / "model"
    retrained = invoke(["retrain", "--study", "c", "--storage", url, "--out", str(out), "--export", "torchscript",
                        "--device", "cpu", "--quiet"])
    assert retrained.exit_code == 0, retrained.output
    return out, held_out


def held_out_batch(model, held_out: Path) -> torch.Tensor:
    return torch.stack([model.preprocess(Image.open(path)) for path in sorted(held_out.rglob("*.png"))])


def test_retrain_writes_the_temperature_fitted_on_val_into_model_json(calibrated):
    out, _ = calibrated
    doc = json.loads((out / "model.json").read_text())
    calibration = doc["calibration"]
    assert calibration["fitted_on"] == f"val ({calibration['images']} images, not trained on)"
    assert doc["temperature"] == calibration["temperature"] and 0.05 <= doc["temperature"] < 1
    assert calibration["ece_after"] < calibration["ece_before"]


def test_evaluate_on_held_out_images_reports_a_lower_ece_after_and_draws_the_diagram(calibrated, tmp_path):
    out, held_out = calibrated
    diagram = tmp_path / "reliability.png"
    result = invoke(["evaluate", "--model", str(out), "--data", str(held_out), "--format", "json", "--device", "cpu",
                     "--confusion-matrix", str(tmp_path / "cm.png"), "--reliability-diagram", str(diagram)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["images"] == 250 and report["ece_bins"] == 15
    assert report["temperature"] == json.loads((out / "model.json").read_text())["temperature"]
    # Head-only, 3 epochs: underconfident; the temperature fitted on val more than halves it here.
    assert report["ece_after"] < report["ece_before"] / 2
    assert sum(row["count"] for row in report["reliability"]["after"]) == 250
    assert report["reliability_diagram_png"] == str(diagram)
    assert diagram.read_bytes()[:8] == PNG_MAGIC


def test_the_temperature_leaves_the_argmax_and_survives_load_model_and_torchscript(calibrated):
    out, held_out = calibrated
    model, raw = load_model(out), load_model(out, calibrated=False)
    images = held_out_batch(model, held_out)
    with torch.no_grad():
        calibrated_p, raw_logits = model(images).softmax(1), raw(images)
    assert model.temperature == json.loads((out / "model.json").read_text())["temperature"]
    assert torch.equal(calibrated_p.argmax(1), raw_logits.argmax(1))
    assert torch.allclose(calibrated_p, (raw_logits / model.temperature).softmax(1), atol=1e-6)
    # Sharper than the raw model (T < 1), and as sharp in the TorchScript file.
    assert calibrated_p.max(1).values.mean() > raw_logits.softmax(1).max(1).values.mean()
    # The TorchScript file takes RGB in [0, 1] and holds the normalisation and the temperature.
    scripted = torch.jit.load(str(out / "model.torchscript.pt"))
    pixels = torch.stack([image_to_tensor(Image.open(p), 16) for p in sorted(held_out.rglob("*.png"))])
    with torch.no_grad():
        assert torch.allclose(scripted(pixels.float() / 255).softmax(1), model(model.preprocess.normalize(pixels))
                              .softmax(1), atol=1e-5)


def test_a_model_folder_from_before_calibration_loads_with_temperature_1(calibrated, tmp_path):
    out, held_out = calibrated
    old = tmp_path / "old"
    old.mkdir()
    (old / "weights.pt").write_bytes((out / "weights.pt").read_bytes())
    doc = json.loads((out / "model.json").read_text())
    del doc["temperature"], doc["calibration"]
    (old / "model.json").write_text(json.dumps(doc))
    model, raw = load_model(old), load_model(out, calibrated=False)
    assert model.temperature == 1.0
    images = held_out_batch(model, held_out)[:8]
    with torch.no_grad():
        assert torch.equal(model(images), raw(images))
    predicted = invoke(["predict", "--model", str(old), str(held_out / "3"), "--top-k", "1", "--device", "cpu"])
    assert predicted.exit_code == 0, predicted.output


@pytest.mark.parametrize("temperature", [0, -1.5, "warm", [1.0, 2.0], math.inf])
def test_a_bad_temperature_in_model_json_is_one_line(calibrated, tmp_path, temperature):
    out, held_out = calibrated
    bad = tmp_path / "bad"
    bad.mkdir()
    doc = {**json.loads((out / "model.json").read_text()), "temperature": temperature}
    (bad / "model.json").write_text(json.dumps(doc))
    result = invoke(["predict", "--model", str(bad), str(held_out / "3"), "--device", "cpu"])
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: {bad / 'model.json'}: ") and result.stderr.count("\n") == 1
