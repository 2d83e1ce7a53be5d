"""Zoo check: every model `tuner models` lists trains one step in every freeze strategy, or is refused cleanly.

For each torchvision classifier and efficientnet_lite0 (timm's models are skipped: there are
over a thousand, and timm builds their heads itself), at the smallest input size tuner's own
input-size probe accepts (tuner.service._prepare), one real trial runs per column through
tuner's Objective on an in-memory Optuna study: freeze head (on the feature cache), last_blocks,
full, gradual, and `probe` (last_blocks with head_init: probe, the probe training the head on
cached features). --weights none (nothing downloads), two digits images to train on and two to
validate, batch 2, one epoch of one step. A model no probed size fits must be refused by
`tuner create` before anything is written, with one `Error:` line (REFUSED); anything else
that does not end in a completed trial is a FAIL. Prints a line per model and strategy, a
summary line, and with --out a markdown table; exits 1 when anything FAILed.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import optuna
import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402

from tuner.search._objective import make_objective  # noqa: E402
from tuner.service._prepare import smallest_input_size  # noqa: E402
from tuner.space._space import parse_space  # noqa: E402
from tuner.training._data import DataConfig, ImageData, load_data  # noqa: E402
from tuner.training._models import ModelSpec, available_models, build_model  # noqa: E402
from tuner.training._settings import TrialSettings  # noqa: E402
from tuner.training._sources import TIMM_PREFIX  # noqa: E402

STRATEGIES = ("head", "last_blocks", "full", "gradual", "probe")
# Two images train and two validate: one epoch is one step. At a model's smallest size its last
# maps are often 1x1, and BatchNorm over two values per channel can give NaN gradients in a deep
# network (resnet152): --batch-size 4 is the way out, and tuner prunes such a trial as diverged.
BATCH = 2
SPACE = """\
params:
  freeze: {{type: fixed, value: {freeze}}}
  head_init: {{type: fixed, value: {head_init}}}
  unfreeze_blocks: {{type: fixed, value: 1}}
  unfreeze_every: {{type: fixed, value: 1}}
  lr: {{type: fixed, value: 1.0e-3}}
  backbone_lr: {{type: fixed, value: 1.0e-4}}
  optimizer: {{type: fixed, value: adamw}}
  batch_size: {{type: fixed, value: {batch}}}
  epochs: {{type: fixed, value: 1}}
  dropout: {{type: fixed, value: 0.2}}
"""


@dataclass(frozen=True)
class Outcome:
    model: str
    strategy: str
    result: str  # PASS, PASS (batch N), REFUSED or FAIL
    size: int | None
    seconds: float
    detail: str = ""


def main() -> None:
    args = parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    names, skipped = select_models(args.models)
    strategies = [s for s in args.strategies.split(",") if s]
    unknown = sorted(set(strategies) - set(STRATEGIES))
    if unknown:
        sys.exit(f"--strategies: unknown {', '.join(unknown)} (choose from {', '.join(STRATEGIES)})")
    print(f"zoo check on {machine()}, torchvision {torchvision.__version__}")
    print(f"{len(names)} model(s) x {len(strategies)} strategies; skipped {skipped} timm model(s) "
          f"({TIMM_PREFIX}*: not swept)", flush=True)
    started = time.monotonic()
    outcomes: list[Outcome] = []
    with tempfile.TemporaryDirectory(prefix="tuner-zoo-") as scratch:
        sweep = Sweep(Path(scratch), args.batch_size)
        for name in names:
            outcomes.extend(sweep.model(name, strategies))
    counts = {r: sum(o.result.split()[0] == r for o in outcomes) for r in ("PASS", "REFUSED", "FAIL")}
    print(f"SUMMARY: {counts['PASS']} PASS, {counts['REFUSED']} REFUSED, {counts['FAIL']} FAIL "
          f"of {len(outcomes)} ({len(names)} models) in {time.monotonic() - started:.0f} s")
    if args.out:
        Path(args.out).write_text(markdown(outcomes, strategies, " ".join(["bench/zoo.py", *sys.argv[1:]])), encoding="utf-8")
        print(f"wrote {args.out}")
    sys.exit(1 if counts["FAIL"] else 0)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="*", metavar="PATTERN",
                        help="comma-separated shell patterns (resnet*, vit_b_16) or substrings of model names; "
                             "MODULE:FUNCTION names a model of yours")
    parser.add_argument("--strategies", default=",".join(STRATEGIES),
                        help=f"comma-separated, of {', '.join(STRATEGIES)} (default: all)")
    parser.add_argument("--batch-size", type=int, default=BATCH, metavar="N",
                        help=f"images to train on, and the batch: one step (default {BATCH})")
    parser.add_argument("--out", metavar="FILE", help="also write the table as markdown")
    return parser.parse_args()


def select_models(patterns: str) -> tuple[list[str], int]:
    """The models the patterns select (timm's left out), and how many timm models were skipped.

    A MODULE:FUNCTION pattern is taken as it is: a model of the user's, as --model takes one.
    """
    every = available_models()
    timm = [n for n in every if n.startswith(TIMM_PREFIX)]
    wanted = [p for p in patterns.split(",") if p]
    functions = [p for p in wanted if ":" in p and not p.startswith(TIMM_PREFIX)]

    def chosen(name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, p) or p in name for p in wanted)

    return [n for n in every if not n.startswith(TIMM_PREFIX) and chosen(n)] + functions, len(timm)


class Sweep:
    """Runs the zoo's trials; decoded digits are kept per input size, the feature cache in `scratch`."""

    def __init__(self, scratch: Path, batch: int = BATCH) -> None:
        self.scratch = scratch
        self.batch = batch
        self.data: dict[tuple[int, int], ImageData] = {}

    def model(self, name: str, strategies: list[str]) -> list[Outcome]:
        started = time.monotonic()
        try:
            size = smallest_input_size(build_model(ModelSpec(name, weights="none", num_classes=10)).model)
        except Exception as exc:  # noqa: BLE001 - a model that cannot even be built is a FAIL
            return [self.report(Outcome(name, s, "FAIL", None, time.monotonic() - started, reason(exc)))
                    for s in strategies]
        if size is None:
            refused = self.refused(name)
            return [self.report(Outcome(name, s, refused.result, None, refused.seconds, refused.detail))
                    for s in strategies]
        return [self.report(self.with_retry(name, size, s)) for s in strategies]

    def with_retry(self, name: str, size: int, strategy: str) -> Outcome:
        """The trial, and once more at twice the batch if it was pruned as diverged.

        At a model's smallest size its last maps are often 1x1, and BatchNorm over two values
        per channel can overflow in a deep network's backward (resnet152 `full`): tuner rightly
        prunes that trial as diverged, and with 4 images per batch the model trains. Reported
        as PASS (batch 4), so one sweep shows every model training, and why it needed it."""
        outcome = self.trial(name, size, strategy)
        if outcome.detail != "trial pruned: diverged":
            return outcome
        retried = self.trial(name, size, strategy, batch=2 * self.batch)
        if retried.result != "PASS":
            return outcome
        return Outcome(name, strategy, f"PASS (batch {2 * self.batch})", size, outcome.seconds + retried.seconds,
                       f"batch {self.batch}: pruned as diverged")

    def trial(self, name: str, size: int, strategy: str, batch: int | None = None) -> Outcome:
        """One real trial of `strategy` through tuner's Objective: PASS when it completes one step."""
        batch = batch or self.batch
        freeze, head_init = ("last_blocks", "probe") if strategy == "probe" else (strategy, "random")
        space = parse_space(SPACE.format(freeze=freeze, head_init=head_init, batch=batch),
                            source="zoo.yaml", name="zoo")
        settings = TrialSettings(model=name, weights="none", image_size=size, device="cpu", seed=0,
                                 cache_dir=str(self.scratch / "features"))
        study = optuna.create_study(direction="maximize")
        started = time.monotonic()
        try:
            study.optimize(make_objective(space, self.digits(size, batch), settings), n_trials=1)
        except Exception as exc:  # noqa: BLE001 - the point is to see every failure
            traceback.print_exc(limit=-3)
            return Outcome(name, strategy, "FAIL", size, time.monotonic() - started, reason(exc))
        result, detail = verdict(study.trials[0], strategy)
        return Outcome(name, strategy, result, size, time.monotonic() - started, detail)

    def digits(self, size: int, batch: int) -> ImageData:
        """`batch` training and `batch` validation images of digits: one epoch is one step."""
        if (size, batch) not in self.data:
            full, n = load_data(DataConfig("digits", size)), batch
            self.data[size, batch] = ImageData(
                train_images=full.train_images[:n].clone(), train_targets=full.train_targets[:n].clone(),
                val_images=full.val_images[:n].clone(), val_targets=full.val_targets[:n].clone(),
                classes=full.classes, multilabel=False, skipped=0,
            )
        return self.data[size, batch]

    def refused(self, name: str) -> Outcome:
        """`tuner create` of a model no probed size fits: one Error line, exit 1, no storage file."""
        folder = self.scratch / f"refused-{name.replace(':', '-')}"
        folder.mkdir()
        started = time.monotonic()
        command = [sys.executable, "-m", "tuner", "create", "--study", "zoo", "--data", "digits", "--model", name, "--weights", "none",
                   "--image-size", "16", "--storage", f"sqlite:///{folder / 'tuner.db'}",
                   "--artifacts", str(folder / "artifacts")]
        # Run elsewhere, so that a stray file would show; a MODULE:FUNCTION model imports from here.
        path = os.pathsep.join(p for p in (os.getcwd(), os.environ.get("PYTHONPATH")) if p)
        done = subprocess.run(command, capture_output=True, text=True, cwd=folder,
                              env={**os.environ, "PYTHONPATH": path})
        lines = (done.stdout + done.stderr).strip().splitlines()
        clean = (done.returncode == 1 and len(lines) == 1 and lines[0].startswith("Error:")
                 and not any(folder.iterdir()))
        return Outcome(name, "*", "REFUSED" if clean else "FAIL", None, time.monotonic() - started,
                       lines[0] if clean else f"exit {done.returncode}: {' | '.join(lines[-3:])}")

    @staticmethod
    def report(outcome: Outcome) -> Outcome:
        size = f"{outcome.size} px" if outcome.size else "-"
        detail = f"  {outcome.detail}" if outcome.detail else ""
        print(f"{outcome.result:7} {outcome.model:24} {outcome.strategy:12} {size:>7} {outcome.seconds:6.1f} s"
              f"{detail}", flush=True)
        return outcome


def verdict(trial: optuna.trial.FrozenTrial, strategy: str) -> tuple[str, str]:
    """PASS for a completed one-step trial that took the path its strategy names."""
    attrs = trial.user_attrs
    if trial.state != optuna.trial.TrialState.COMPLETE:
        return "FAIL", f"trial {trial.state.name.lower()}: {attrs.get('stop_reason', '')}"
    if len(attrs.get("history", [])) != 1:
        return "FAIL", f"ran {len(attrs.get('history', []))} epochs, expected 1"
    if strategy == "head" and attrs.get("feature_cache") is not True:
        return "FAIL", "head-only trial did not train on cached features"
    if strategy == "probe" and "probe" not in attrs:
        return "FAIL", "no probe ran"
    return "PASS", ""


def reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:200]}"


def markdown(outcomes: list[Outcome], strategies: list[str], command: str) -> str:
    """One row per model: its input size, each strategy's result, and the first failure's reason."""
    rows = [f"Zoo check of {time.strftime('%Y-%m-%d')}: torch {torch.__version__}, torchvision "
            f"{torchvision.__version__}; `python {command}`", "",
            "| model | size | " + " | ".join(strategies) + " | note |",
            "|---|---|" + "---|" * len(strategies) + "---|"]
    by_model: dict[str, list[Outcome]] = {}
    for outcome in outcomes:
        by_model.setdefault(outcome.model, []).append(outcome)
    for model, mine in by_model.items():
        size = f"{mine[0].size}" if mine[0].size else "-"
        note = next((o.detail for o in mine if o.detail), "").replace("|", "/")
        rows.append(f"| {model} | {size} | " + " | ".join(o.result for o in mine) + f" | {note} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    main()
