"""Temperature scaling (Guo et al. 2017) and the expected calibration error, in torch alone."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

BINS = 15
# A held-out set the model gets all right has its NLL fall for ever as T -> 0 (certainty):
# the temperature is kept where a probability still says something.
T_MIN, T_MAX = 0.05, 20.0


def activation(logits: torch.Tensor, multilabel: bool) -> torch.Tensor:
    return logits.sigmoid() if multilabel else logits.softmax(1)


def nll(logits: torch.Tensor, targets: torch.Tensor, multilabel: bool) -> torch.Tensor:
    """Mean negative log-likelihood: per label (binary) for multi-label targets, per image otherwise."""
    if multilabel:
        return F.binary_cross_entropy_with_logits(logits, targets.float())
    return F.cross_entropy(logits, targets)


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor, multilabel: bool, *,
                    per_label: bool = False) -> torch.Tensor:
    """The T (one, or one per label) that minimises the NLL of logits / T; LBFGS on log T, so T > 0."""
    logits = logits.detach().double()
    log_t = torch.zeros(logits.shape[1] if per_label else 1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = nll(logits / log_t.exp(), targets, multilabel)
        loss.backward()
        return loss

    optimizer.step(closure)
    return log_t.detach().exp().clamp(T_MIN, T_MAX).float()


def confidences(probabilities: torch.Tensor, targets: torch.Tensor,
                multilabel: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(confidence, correct) per decision: each image's top probability and whether its class is right;
    for multi-label models each (image, label) yes/no decision at 0.5, with confidence max(p, 1 - p)."""
    if multilabel:
        p = probabilities.flatten().double()
        return torch.maximum(p, 1 - p), (p >= 0.5) == (targets.flatten() > 0.5)
    top, predicted = probabilities.double().max(1)
    return top, predicted == targets


def reliability(confidence: torch.Tensor, correct: torch.Tensor, bins: int = BINS) -> list[dict[str, Any]]:
    """Per equal-width bin ((m-1)/B, m/B] of confidence: its count, mean confidence and accuracy."""
    index = (confidence.double() * bins).ceil().long().clamp(1, bins) - 1
    rows = []
    for m in range(bins):
        members = index == m
        count = int(members.sum())
        rows.append({"low": m / bins, "high": (m + 1) / bins, "count": count,
                     "confidence": float(confidence[members].double().mean()) if count else None,
                     "accuracy": float(correct[members].double().mean()) if count else None})
    return rows


def expected_calibration_error(confidence: torch.Tensor, correct: torch.Tensor, bins: int = BINS) -> float:
    """sum over bins of |bin| / n * |accuracy - mean confidence| (Guo et al. 2017, eq. 3)."""
    total = len(confidence)
    return sum(row["count"] / total * abs(row["accuracy"] - row["confidence"])
               for row in reliability(confidence, correct, bins) if row["count"]) if total else 0.0


def ece_of(logits: torch.Tensor, targets: torch.Tensor, multilabel: bool) -> float:
    return expected_calibration_error(*confidences(activation(logits, multilabel), targets, multilabel))


def temperature_value(temperature: torch.Tensor) -> float | list[float]:
    """model.json's form: one number, or one per label."""
    values = [round(float(t), 6) for t in temperature.flatten()]
    return values[0] if len(values) == 1 else values


@dataclass(frozen=True)
class Calibration:
    """A fitted temperature and what it did on the images it was fitted on."""

    temperature: float | list[float]
    fitted_on: str
    images: int
    nll_before: float
    nll_after: float
    ece_before: float
    ece_after: float

    def as_doc(self) -> dict[str, Any]:
        return {"method": "temperature scaling (Guo et al. 2017)", "temperature": self.temperature,
                "fitted_on": self.fitted_on, "images": self.images, "bins": BINS,
                "nll_before": round(self.nll_before, 6), "nll_after": round(self.nll_after, 6),
                "ece_before": round(self.ece_before, 6), "ece_after": round(self.ece_after, 6)}


def calibrate(logits: torch.Tensor, targets: torch.Tensor, multilabel: bool, fitted_on: str) -> Calibration:
    """Fit one temperature on held-out logits and measure NLL and ECE before and after."""
    logits = logits.detach().float()
    temperature = fit_temperature(logits, targets, multilabel)
    scaled = logits / temperature
    return Calibration(
        temperature=temperature_value(temperature), fitted_on=fitted_on, images=len(targets),
        nll_before=float(nll(logits, targets, multilabel)), nll_after=float(nll(scaled, targets, multilabel)),
        ece_before=ece_of(logits, targets, multilabel), ece_after=ece_of(scaled, targets, multilabel))
