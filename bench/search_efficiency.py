"""(c) Search efficiency on digits: tuner's defaults vs random search without pruning.

tuner's defaults: TPE (multivariate, grouped) + Hyperband pruning + early stopping + the
seed's warm-start configurations. Baseline: random sampling, no pruning, no warm start.
Both run the same trainer on the same data split with the default space, for several seeds.
Reports the epochs tuner needs to reach random search's final best accuracy (within 0.5
points) as a share of random search's epochs (target <= 30%), and the best accuracy of each
at equal compute.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import optuna

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402

from tuner.data import DataConfig, ImageData, load_data  # noqa: E402
from tuner.objective import Objective, TrialSettings  # noqa: E402
from tuner.space import load_space  # noqa: E402
from tuner.study import StudyConfig, make_pruner, make_sampler, warm_start_params  # noqa: E402


def subset(data: ImageData, n_train: int) -> ImageData:
    return ImageData(train_images=data.train_images[:n_train], train_targets=data.train_targets[:n_train],
                     val_images=data.val_images, val_targets=data.val_targets, classes=data.classes,
                     multilabel=False, skipped=0)


def search(data, args, seed: int, tuned: bool, cache_dir: str) -> list[tuple[int, float | None]]:
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
    settings = TrialSettings(model=args.model, weights="none", image_size=args.image_size, device="cpu",
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
    parser.add_argument("--train-images", type=int, default=300)
    parser.add_argument("--image-size", type=int, default=8)
    parser.add_argument("--model", default="resnet18")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    print(f"(c) search efficiency on digits ({args.train_images} training images, {args.image_size}px, "
          f"{args.model}, {args.trials} trials, max {args.max_epochs} epochs) on {machine()}")
    data = subset(load_data(DataConfig("digits", args.image_size)), args.train_images)
    shares, tuned_best, random_best = [], [], []
    with tempfile.TemporaryDirectory() as cache_dir:
        for seed in range(args.seeds):
            started = time.perf_counter()
            random_runs = search(data, args, seed, False, cache_dir)
            middle = time.perf_counter()
            tuned_runs = search(data, args, seed, True, cache_dir)
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
