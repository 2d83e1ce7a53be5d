"""bench/transfer.py's figures: the table per method, the targets per task, the suite's summary, JSON and the PNG."""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from _transfer_ledger import Trace

# The saved traces' format: 2 counts spent epochs as cumulative floats (probes and caches
# charged). Format 1 (no key) counted whole epochs: its figures mean something else.
TRACE_FORMAT = 2
# What must match for another run's traces to be compared with this one's.
COMPARED_SETTINGS = ("task", "data", "classes", "data_seed", "model", "weights", "space", "image_size",
                     "per_class", "val_per_class", "budget_epochs", "max_epochs", "cache_views")
# (label, baseline, target): tuner's epochs to reach the baseline's final best / its whole spending.
RATIOS = (("c1", "random", 0.20), ("c2", "optuna", 0.50), ("c3", "optuna+recipes", 0.70))


@dataclass(frozen=True)
class Target:
    """One target of the issue on one task: its figure, and whether it is met (None: not measured)."""

    label: str
    figure: str
    met: bool | None
    line: str

    @property
    def verdict(self) -> str:
        return "not measured" if self.met is None else "MET" if self.met else "NOT MET"


def mean_std(values: Sequence[float]) -> str:
    known = [v for v in values if not math.isnan(v)]
    if not known:
        return "   -          "
    spread = statistics.stdev(known) if len(known) > 1 else 0.0
    missing = f" ({len(known)}/{len(values)})" if len(known) < len(values) else ""
    return f"{statistics.mean(known):.4f} ± {spread:.4f}{missing}"


def mean_of(values: Sequence[float]) -> float:
    known = [v for v in values if not math.isnan(v)]
    return statistics.mean(known) if len(known) == len(values) and known else math.nan


def reach_text(traces: Sequence[Trace], targets: Mapping[int, float]) -> str:
    reached = [t.reach(targets[t.seed]) for t in traces]
    hits = [r for r in reached if r is not None]
    if not hits:
        return f"never (0/{len(traces)})"
    epochs = statistics.mean(r[0] for r in hits)
    seconds = statistics.mean(r[1] for r in hits)
    return f"{epochs:5.1f} epochs, {seconds:6.0f} s ({len(hits)}/{len(traces)} seeds)"


def print_table(results: Mapping[str, list[Trace]], config: Any) -> None:
    targets = baseline_targets(results, config)
    print(f"\nBest validation accuracy (mean ± std over {config.seeds} seeds) at 25% / 50% / 100% of "
          f"{config.budget_epochs} epochs; then epochs and seconds to reach random search's final best; "
          "epochs spent, and how many of them were probes' and feature caches' (charged in fine-tuning epochs)")
    for method, traces in results.items():
        cells = [mean_std([t.best_at(config.budget_epochs * share) for t in traces]) for share in (0.25, 0.5)]
        cells.append(mean_std([t.final for t in traces]))
        reach = reach_text(traces, targets) if targets else "-"
        seconds = statistics.mean(t.seconds[-1] if t.seconds else 0.0 for t in traces)
        spent = statistics.mean(t.spent for t in traces)
        probes = (statistics.mean(t.probe_epochs for t in traces), statistics.mean(t.probe_seconds for t in traces))
        caches = (statistics.mean(t.cache_epochs for t in traces), statistics.mean(t.cache_seconds for t in traces))
        notes = "; ".join(sorted({t.note for t in traces if t.note}))
        print(f"  {method:14s} {cells[0]:>22s} {cells[1]:>22s} {cells[2]:>22s}  reach: {reach}; "
              f"spent {spent:.1f} epochs in {seconds:.0f} s, of them probes {probes[0]:.2f} epochs ({probes[1]:.1f} s) "
              f"and caches {caches[0]:.2f} epochs ({caches[1]:.2f} s){f'; {notes}' if notes else ''}")


def baseline_targets(results: Mapping[str, list[Trace]], config: Any, baseline: str = "random") -> dict[int, float]:
    return {t.seed: t.final - config.tolerance for t in results.get(baseline, [])}


def reach_share(tuned: Trace, base: Trace, tolerance: float, unit: str) -> float:
    """tuner's cost to reach `base`'s final best, as a share of `base`'s whole cost (inf: never)."""
    reached = tuned.reach(base.final - tolerance)
    if reached is None or math.isnan(base.final) or not base.seconds:
        return math.inf
    return reached[0] / base.spent if unit == "epochs" else reached[1] / base.seconds[-1]


def ratio_target(results: Mapping[str, list[Trace]], config: Any, label: str, baseline: str, target: float,
                 unit: str) -> Target:
    """(c1), (c2), (c3): mean over seeds of tuner's share of the baseline's spending to reach its final best."""
    name = label if unit == "epochs" else f"{label}, seconds"
    if "tuner" not in results or baseline not in results:
        return Target(name, "-", None, f"RATIO ({name}) needs methods tuner and {baseline}: not measured")
    shares = [reach_share(tuned, base, config.tolerance, unit) for tuned, base in zip(results["tuner"], results[baseline])]
    per_seed = ", ".join("never" if math.isinf(s) else f"{s:.2f}" for s in shares)
    mean = statistics.mean(shares)
    figure = "never" if math.isinf(mean) else f"{mean:.3f}"
    met = mean <= target
    return Target(name, figure, met, f"RATIO ({name}) tuner's {unit} to reach {baseline}'s final best / {baseline}'s "
                  f"{unit} = {figure} (mean; per seed {per_seed}); target <= {target:.2f} -> {'MET' if met else 'NOT MET'}")


def final_target(results: Mapping[str, list[Trace]]) -> Target:
    """tuner's mean final best >= every baseline's mean final best, less one validation image."""
    label = "final"
    baselines = {m: mean_of([t.final for t in traces]) for m, traces in results.items() if m != "tuner"}
    if "tuner" not in results or not baselines:
        return Target(label, "-", None, "TARGET (final) needs tuner and a baseline: not measured")
    tuned = mean_of([t.final for t in results["tuner"]])
    val_images = max(t.val_images for t in results["tuner"]) or 1
    best_method = max(baselines, key=lambda m: -math.inf if math.isnan(baselines[m]) else baselines[m])
    margin = (tuned - baselines[best_method]) * val_images  # in validation images
    met = not math.isnan(margin) and margin >= -1 - 1e-6
    figure = f"{margin:+.1f} img vs {best_method}"
    others = ", ".join(f"{m} {v:.4f}" for m, v in baselines.items())
    return Target(label, figure, met, f"TARGET (final) tuner's mean final best {tuned:.4f} >= every baseline's "
                  f"mean final best - 1/{val_images} ({others}): {margin:+.1f} validation images against {best_method} "
                  f"-> {'MET' if met else 'NOT MET'}")


def early_target(results: Mapping[str, list[Trace]], config: Any, baseline: str = "optuna+recipes") -> Target:
    """tuner's mean best at 25% of the budget >= the baseline's."""
    label = "25%"
    if "tuner" not in results or baseline not in results:
        return Target(label, "-", None, f"TARGET (25%) needs methods tuner and {baseline}: not measured")
    at = config.budget_epochs * 0.25
    # A seed with no counted trial yet has no model to show: it counts as 0.
    tuned, base = (statistics.mean(0.0 if math.isnan(v) else v for v in (t.best_at(at) for t in results[m]))
                   for m in ("tuner", baseline))
    # How many seeds had a finished trial by then: 0.0 against 0.0 is a tie of empty hands.
    shown = [sum(not math.isnan(t.best_at(at)) for t in results[m]) for m in ("tuner", baseline)]
    met = tuned >= base
    figure = f"{tuned:.4f} vs {base:.4f} ({shown[0]}/{len(results['tuner'])}, {shown[1]}/{len(results[baseline])})"
    return Target(label, figure, met, f"TARGET (25%) tuner's mean best after {at:g} epochs {tuned:.4f} >= "
                  f"{baseline}'s {base:.4f} (seeds with a finished trial by then: {shown[0]} and {shown[1]}) "
                  f"-> {'MET' if met else 'NOT MET'}")


def task_targets(results: Mapping[str, list[Trace]], config: Any) -> list[Target]:
    """Every target of the issue on this task, in the order of the suite's table; the seconds
    versions of the ratios follow (printed, not in the summary)."""
    ratios = [ratio_target(results, config, label, base, goal, "epochs") for label, base, goal in RATIOS]
    seconds = [ratio_target(results, config, label, base, goal, "seconds") for label, base, goal in RATIOS]
    return ratios + [final_target(results), early_target(results, config)] + seconds


SUMMARY_LABELS = ("c1", "c2", "c3", "final", "25%")


def print_suite_table(rows: Mapping[str, list[Target]]) -> None:
    """task x target: each figure with MET / NOT MET."""
    print("\nSuite summary: (c1) <= 0.20 vs random, (c2) <= 0.50 vs optuna, (c3) <= 0.70 vs optuna+recipes "
          "(tuner's epochs to reach the baseline's final best / its epochs, mean over seeds); final: tuner's "
          "mean final best minus the best baseline's, in validation images (>= -1); 25%: tuner's mean best at "
          "25% of the budget vs optuna+recipes'")
    header = f"  {'task':11s}" + "".join(f" | {label:^34s}" for label in SUMMARY_LABELS)
    print(header)
    print("  " + "-" * (len(header) - 2))
    for task, targets in rows.items():
        by_label = {t.label: t for t in targets}
        cells = [by_label.get(label) for label in SUMMARY_LABELS]
        print(f"  {task:11s}" + "".join(
            f" | {(f'{c.figure} {c.verdict}' if c else '-'):^34s}" for c in cells))


def save_traces(results: Mapping[str, list[Trace]], config: Any, path: Path) -> None:
    """The run's traces and settings as JSON, so a later run (--compare) can reuse its baselines."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"format": TRACE_FORMAT, "config": compared(config),
            "traces": [asdict(t) for traces in results.values() for t in traces]}
    path.write_text(json.dumps(body, indent=1))


def compared(config: Any) -> dict[str, Any]:
    values = {k: v for k, v in asdict(config).items() if k in COMPARED_SETTINGS}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}  # as JSON reads it back


def load_traces(path: Path, config: Any, skip: Sequence[str]) -> dict[str, list[Trace]]:
    """Traces of an earlier run with the same set-up, for the methods this run does not run."""
    body = json.loads(path.read_text())
    if body.get("format") != TRACE_FORMAT:
        raise SystemExit(f"--compare {path}: written by an older bench (trace format {body.get('format', 1)}, this "
                         f"bench reads {TRACE_FORMAT}: spent epochs now include probes and feature caches as "
                         "fractions of an epoch). Run those methods again with --save.")
    ours = compared(config)
    differ = [f"{k} ({body['config'].get(k)!r} there, {v!r} here)" for k, v in ours.items()
              if body["config"].get(k) != v]
    if differ:
        raise SystemExit(f"--compare {path}: another set-up: {', '.join(differ)}")
    known = {f.name for f in fields(Trace)}
    out: dict[str, list[Trace]] = {}
    for raw in body["traces"]:
        if raw["method"] not in skip and raw["seed"] < config.seeds:
            out.setdefault(raw["method"], []).append(Trace(**{k: v for k, v in raw.items() if k in known}))
    short = sorted(m for m, traces in out.items() if len(traces) < config.seeds)
    if short:  # that run is still going, or had fewer seeds: its methods are left out for now
        print(f"(--compare {path}: fewer than {config.seeds} seeds of {', '.join(short)}; left out)")
    return {m: traces for m, traces in out.items() if m not in short}


def draw(results: Mapping[str, list[Trace]], config: Any, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    path.parent.mkdir(parents=True, exist_ok=True)
    figure, axes = pyplot.subplots(figsize=(8, 5))
    # Spent epochs are fractional (probes and caches charged): a fine grid of the budget.
    x = np.linspace(0, config.budget_epochs, 20 * config.budget_epochs + 1)
    styles = ("-", "--", ":", "-.")  # methods that find the same trials (random, plain Optuna) stay visible
    for number, (method, traces) in enumerate(results.items()):
        curves = np.array([[t.best_at(e) for e in x] for t in traces], dtype=float)
        known = ~np.isnan(curves).all(axis=0)
        with np.errstate(all="ignore"):
            mean, std = np.nanmean(curves[:, known], axis=0), np.nanstd(curves[:, known], axis=0)
        axes.plot(x[known], mean, label=method, drawstyle="steps-post", linestyle=styles[number % len(styles)],
                  linewidth=2)
        axes.fill_between(x[known], mean - std, mean + std, alpha=0.2, step="post")
    axes.set_xlabel("epochs spent (all trials, pruned ones included; probes and feature caches charged)")
    axes.set_ylabel("best validation accuracy so far")
    axes.set_title(f"{config.task}: {config.model} ({config.weights}) on {config.data}, {config.image_size} px: "
                   f"mean ± std over {config.seeds} seeds", fontsize=9)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    pyplot.close(figure)
