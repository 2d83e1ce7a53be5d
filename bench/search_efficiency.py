"""(c) Search efficiency on digits: tuner's defaults vs random search without pruning.

tuner's defaults: TPE (multivariate, grouped) + Hyperband pruning + early stopping + the
seed's warm-start configurations. Baseline: random sampling, no pruning, no warm start.
Both run the same trainer on the same data split with the default space, for several seeds.
Reports the epochs tuner needs to reach random search's final best accuracy (within 0.5
points) as a share of random search's epochs (target <= 30%), and the best accuracy of each
at equal compute.

The search runs on a few labelled images of digits 5-9 (the target task). `--weights` picks
where the model starts: `none` (random initialisation, the default: nothing can be downloaded
here), `imagenet` (torchvision's cached weights, on a machine that has them), a state dict
file, or `source`: the benchmark first trains the model from scratch on digits 0-4 (the
source task), saves its weights and loads that file through tuner's `--weights PATH`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import optuna
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402

from tuner.data import DataConfig, ImageData, load_data  # noqa: E402
from tuner.objective import Objective, TrialSettings  # noqa: E402
from tuner.space import load_space, parse_space  # noqa: E402
from tuner.study import StudyConfig, make_pruner, make_sampler, warm_start_params  # noqa: E402


# Source pre-training: every value fixed, full training from random initialisation.
SOURCE_SPACE = """\
description: Bench (c) source task, trained from scratch before the search.
params:
  freeze: {type: fixed, value: full}
  lr: {type: fixed, value: 2.0e-3}
  backbone_lr: {type: fixed, value: 2.0e-3}
  optimizer: {type: fixed, value: adamw}
  batch_size: {type: fixed, value: 64}
  epochs: {type: fixed, value: %d}
  scheduler: {type: fixed, value: cosine}
  patience: {type: fixed, value: 100}
"""


def classes_of(data: ImageData, first: int, last: int, n_train: int | None = None) -> ImageData:
    """Only digits first..last, relabelled from 0; at most n_train training images."""
    def keep(targets: torch.Tensor) -> torch.Tensor:
        return ((targets >= first) & (targets <= last)).nonzero().flatten()

    train, val = keep(data.train_targets)[:n_train], keep(data.val_targets)
    return ImageData(train_images=data.train_images[train], train_targets=data.train_targets[train] - first,
                     val_images=data.val_images[val], val_targets=data.val_targets[val] - first,
                     classes=data.classes[first:last + 1], multilabel=False, skipped=0)


def pretrain(data: ImageData, args, folder: str) -> str:
    """Train the model on the source task and save its weights: the search's pretrained file."""
    space = parse_space(SOURCE_SPACE % args.source_epochs, source="source.yaml", name="source")
    saved: dict = {}

    def keep(trial, value, state_dict, meta) -> None:
        saved.update(value=value, state_dict=state_dict)

    settings = TrialSettings(model=args.model, weights="none", image_size=args.image_size, device="cpu",
                             seed=0, max_epochs=None, cache_views=0)
    Objective(space, data, settings, keep_best=keep)(optuna.trial.FixedTrial({}))
    path = Path(folder) / "source-weights.pt"
    torch.save(saved["state_dict"], path)
    print(f"  source task: {args.model} from scratch on digits 0-4 ({len(data.train_targets)} images, "
          f"{args.source_epochs} epochs): val accuracy {saved['value']:.4f}", flush=True)
    return str(path)


def search(data, args, seed: int, tuned: bool, cache_dir: str, weights: str) -> list[tuple[int, float | None]]:
    """(epochs_run, value) of each finished trial, in order."""
    space = load_space("default")
    config = StudyConfig(space_name="default", space_text=space.text, data="digits", model=args.model,
                         image_size=args.image_size, sampler="tpe" if tuned else "random",
                         pruner="hyperband" if tuned else "none", n_trials=args.trials, seed=seed,
                         max_epochs=args.max_epochs)
    study = optuna.create_study(direction="maximize", sampler=make_sampler(config, seed), pruner=make_pruner(config))
    if tuned:
        for params in warm_start_params(space):
            study.enqueue_trial(params)
    settings = TrialSettings(model=args.model, weights=weights, image_size=args.image_size, device="cpu",
                             seed=seed, max_epochs=args.max_epochs, cache_dir=cache_dir)
    study.optimize(Objective(space, data, settings), n_trials=args.trials)
    return [(t.user_attrs.get("epochs_run", 0), t.value) for t in study.trials]


def epochs_to_reach(runs: list[tuple[int, float | None]], target: float) -> int | None:
    spent = 0
    for epochs, value in runs:
        spent += epochs
        if value is not None and value >= target:
            return spent
    return None


def best_within(runs: list[tuple[int, float | None]], budget: int) -> float:
    spent, best = 0, 0.0
    for epochs, value in runs:
        spent += epochs
        if spent > budget:
            break
        if value is not None:
            best = max(best, value)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--max-epochs", type=int, default=3)
    parser.add_argument("--train-images", type=int, default=300, help="labelled images of the target task")
    parser.add_argument("--image-size", type=int, default=8)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--weights", default="none",
                        help="none, imagenet, a state dict file, or source (pre-train on digits 0-4 first)")
    parser.add_argument("--source-epochs", type=int, default=8)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    print(f"(c) search efficiency on digits 5-9 ({args.train_images} training images, {args.image_size}px, "
          f"{args.model}, weights {args.weights}, {args.trials} trials, max {args.max_epochs} epochs) "
          f"on {machine()}")
    digits = load_data(DataConfig("digits", args.image_size))
    data = classes_of(digits, 5, 9, args.train_images)
    shares, tuned_best, random_best = [], [], []
    with tempfile.TemporaryDirectory() as folder:
        weights = pretrain(classes_of(digits, 0, 4), args, folder) if args.weights == "source" else args.weights
        for seed in range(args.seeds):
            started = time.perf_counter()
            random_runs = search(data, args, seed, False, folder, weights)
            middle = time.perf_counter()
            tuned_runs = search(data, args, seed, True, folder, weights)
            print(f"  seed {seed}: random search {middle - started:.0f} s, tuner {time.perf_counter() - middle:.0f} s",
                  flush=True)
            target = max(v for _, v in random_runs if v is not None)
            random_epochs = sum(e for e, _ in random_runs)
            reached = epochs_to_reach(tuned_runs, target - 0.005)
            share = None if reached is None else reached / random_epochs
            equal = min(random_epochs, sum(e for e, _ in tuned_runs))
            tuned_best.append(best_within(tuned_runs, equal))
            random_best.append(best_within(random_runs, equal))
            if share is not None:
                shares.append(share)
            print(f"  seed {seed}: random best {target:.4f} after {random_epochs} epochs; tuner reached it after "
                  f"{reached if reached is not None else 'never'} epochs"
                  f"{'' if share is None else f' ({share:.0%})'}; at {equal} epochs: tuner "
                  f"{tuned_best[-1]:.4f} vs random {random_best[-1]:.4f}")
    mean_share = statistics.mean(shares) if len(shares) == args.seeds else None
    print(f"  best at equal compute (mean of seeds): tuner {statistics.mean(tuned_best):.4f} "
          f"vs random {statistics.mean(random_best):.4f}")
    if mean_share is None:
        print(f"RATIO (c) tuner did not reach random search's best in {args.seeds - len(shares)} of "
              f"{args.seeds} seeds; target <= 0.30 -> NOT MET")
    else:
        print(f"RATIO (c) epochs to reach random search's best / random search's epochs = {mean_share:.3f} "
              f"(mean of {args.seeds} seeds); target <= 0.30 -> {'MET' if mean_share <= 0.30 else 'NOT MET'}")


if __name__ == "__main__":
    main()
