"""The study's note: markdown that optuna-dashboard shows, on what is searched and how to read the trials."""

from __future__ import annotations

import optuna

from tuner.config import StudyConfig
from tuner.space import SearchSpace, branch_prior, branch_range, branch_when, rounded
from tuner.text import significant


def save_note(study: optuna.Study, body: str) -> None:
    # Imported here: it takes over a second, and the read commands import this module.
    import optuna_dashboard

    optuna_dashboard.save_note(study, body)


def study_note(config: StudyConfig, space: SearchSpace, data_summary: str) -> str:
    """Markdown shown by optuna-dashboard: what is searched, on what data."""
    rows = "\n".join(
        f"| `{name}` | {b.type} | {branch_range(b, rounded)} | {branch_when(b, rounded)} | {branch_prior(b, rounded)} |"
        for name, bs in space.params.items() for b in bs
    )
    return (
        f"# {config.space_name}: {config.model} on {config.data}\n\n"
        f"{space.description}\n\n"
        f"* **Data:** {data_summary}\n"
        f"* **Model:** `{config.model}`, weights `{config.weights}`, {config.image_size}px\n"
        f"* **Metric:** `{config.metric}` ({config.direction})\n"
        f"* **Budget:** {config.n_trials} trials, sampler `{config.sampler}`, pruner `{config.pruner}`, "
        f"seed {config.seed}, max epochs {config.max_epochs or 'from the space'}\n\n"
        f"* **Priors:** {_prior_line(config, space)}\n\n"
        f"{_head_stage_line(config)}"
        "| parameter | type | range | when | prior |\n|---|---|---|---|---|\n" + rows + "\n\n" + ATTRS_NOTE
    )


# Optuna knows no state for a trial a worker ends on purpose: those show as FAIL here.
ATTRS_NOTE = """## Reading the trials

Optuna has no state for a trial that a worker ends on purpose, so these show as **FAIL** in
this dashboard although nothing failed; `tuner status` counts them apart:

* `handed_back: true`: the worker was stopped (Ctrl-C, SIGTERM, `tuner stop`) after a
  checkpoint; a WAITING copy of the trial resumes from it on the next worker.
* `over_budget: true`: the trial started after other workers had taken the whole budget;
  it never trained and does not count.
* a FAIL trial that a later trial names as its `failed_trial` (system attrs) was retried
  after its worker went silent for the grace period; the retry resumes its checkpoint.
* `duplicate_of: N`: a second retry of trial N that two workers queued at once; it was
  dropped before training.

Trials enqueued at creation say why: `warm_start: true` (one of the seed's recipes) or
`head_stage: true` (a head-only trial of the head stage, `--head-trials`).

Other attributes: `lineage` is the number of the first attempt (a retry and a hand-back
keep it, with its seed and checkpoints); `worker` is host:pid:device; `epoch`/`epochs` and
`last_metric` are the progress of a running trial; `stop_reason` says why a trial ended
(completed, early_stopped, pruned, diverged, oom); `best_epoch` and `best_value` are its best
epoch and that epoch's metric.

**The study's best** (`tuner best`, `tuner status`, `tuner retrain`, the report and the
`best-model-trial-N.pt` study artifact) is the best epoch of any completed trial or any trial
the pruner stopped (`stop_reason: pruned`; not diverged or oom): a pruned trial's best epoch
counts, and `tuner retrain` trains its parameters for `best_epoch` epochs. This dashboard's own
best trial and history count completed trials only.
"""


def _head_stage_line(config: StudyConfig) -> str:
    if not config.head_trials:
        return ""
    return (f"* **Head stage:** {config.head_trials} head-only trials after the warm start's recipes; "
            "fine-tuning trials then take `lr` and `dropout` from the best head-only trial\n\n")


def _prior_line(config: StudyConfig, space: SearchSpace) -> str:
    if not space.has_priors:
        return "none in this space"
    if config.sampler == "random" or config.prior_weight == 0:
        return "stated in the space, not used (random sampler or prior weight 0)"
    weight = significant(config.prior_weight)
    return (f"trial n is drawn from them with chance {weight}/({weight}+n), "
            f"else by the `{config.sampler}` sampler")
