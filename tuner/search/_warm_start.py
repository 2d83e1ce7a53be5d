"""The first trials of a new study: the seed's recommended recipes, then the head stage."""

from __future__ import annotations

from typing import Any, Mapping

from tuner.config import StudyConfig
from tuner.search._head_stage import HEAD_STAGE_ATTR, stage_params
from tuner.space import SearchSpace
from tuner.training import Hyperparams

# The seed's recommended starting points, tried first unless --no-warm-start.
WARM_START = (
    {"freeze": "head", "optimizer": "adamw", "lr": 1e-3},
    {"freeze": "last_blocks", "unfreeze_blocks": 1, "backbone_lr": 1e-5, "lr": 1e-3},
    {"freeze": "full", "backbone_lr": 1e-5, "lr": 1e-5},
)
# What tuner adds to the seed's fine-tuning recipes, as far as a space can express it.
PROBED_HEAD = {"head_init": "probe"}
# With --recipes complete, every parameter a recipe leaves open takes the seed's advice
# (shared/seed/transfer-learning-hyperparameters.md) where it gives a value: AdamW with weight
# decay 1e-4, ReduceLROnPlateau(factor 0.1, patience 3), dropout 0.4 (its 0.3-0.5), batch 32,
# a flip and no other augmentation, early stopping after 5 epochs without improvement; and
# each strategy's epochs at the top of the seed's range for it. A recipe's own values win.
SEED_ADVICE = {
    "optimizer": "adamw", "weight_decay": 1e-4, "batch_size": 32, "scheduler": "plateau",
    "plateau_factor": 0.1, "plateau_patience": 3, "dropout": 0.4, "aug_crop_scale": 1.0,
    "aug_hflip": 0.5, "aug_rotation": 0, "aug_color_jitter": 0.0, "label_smoothing": 0.0,
    "class_weighting": "none", "patience": 5,
}
SEED_EPOCHS = {"head": 20, "last_blocks": 30, "full": 50}


def first_trials(config: StudyConfig, space: SearchSpace) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(params, user attrs) enqueued at creation: the warm start's recipes, then the head stage.

    The stage comes after the recipes: measured on bench/transfer.py, the probed fine-tuning
    recipe is the study's quickest good result, and a stage before it only delays it.
    """
    warm = warm_start_params(space, complete=config.recipes == "complete") if config.warm_start else []
    return ([(p, {"warm_start": True}) for p in warm]
            + [(p, {HEAD_STAGE_ATTR: True}) for p in stage_params(config.head_trials)])


def warm_start_params(space: SearchSpace, *, complete: bool = False) -> list[dict[str, Any]]:
    """The seed's recommended configurations that this space can express, as enqueue params.

    Where a recipe fine-tunes and the space has `head_init`, it starts from a probed head
    (LP-FT): measured on bench/transfer.py, the seed's full fine-tuning recipe (head LR 1e-5)
    with a random head stayed near chance for its first epochs and was pruned. `complete`
    fills every other parameter from the seed's advice (complete_recipe).
    """
    out: list[dict[str, Any]] = []
    for config in WARM_START:
        if complete:
            config = complete_recipe(config)
        if config.get("freeze") != "head":
            config = {**config, **PROBED_HEAD}
        params = expressible(space, config)
        # Two recommendations may shrink to the same params in a narrow space: enqueue once.
        if params is not None and params not in out:
            out.append(params)
    return out


def complete_recipe(recipe: Mapping[str, Any]) -> dict[str, Any]:
    """A recipe with the seed's advice for everything it leaves open, and its strategy's epochs."""
    epochs = SEED_EPOCHS.get(recipe.get("freeze", Hyperparams.freeze))
    return {**SEED_ADVICE, **({"epochs": epochs} if epochs else {}), **recipe}


def expressible(space: SearchSpace, config: Mapping[str, Any]) -> dict[str, Any] | None:
    """The part of a recommended configuration that `space` can express, as enqueue params.

    The freeze strategy defines a configuration: a space that cannot take it (or fixes
    another one) gets none of it. Any other value the space cannot take (a parameter
    it lacks, a choice or range it does not offer, a branch that is inactive there) is
    left to the sampler, "as far as the space can express them" (README). Rejecting the
    whole configuration instead meant that e.g. a space without `unfreeze_blocks`, or
    whose optimizers exclude adamw, never got the head / last-block warm start at all.
    """
    defining = "freeze"
    if defining in config and defining not in space.params and config[defining] != Hyperparams.freeze:
        return None  # the space leaves freeze at the trainer's default, and this is another strategy
    values: dict[str, Any] = {"task": "single_label"}
    params: dict[str, Any] = {}
    dropped: set[str] = set()
    for name in space.params:
        kept = {k: v for k, v in config.items() if k not in dropped}
        branch = space.active_branch(name, {**values, **kept})
        if branch is None:
            if name == defining and name in config:
                return None
            dropped.add(name)
            continue
        if branch.fixed:
            if name in config and config[name] != branch.value:
                if name == defining:
                    return None
                dropped.add(name)
            values[name] = branch.value
            continue
        if name not in config:
            continue
        value = config[name]
        if not branch.contains(value):
            if name == defining:
                return None
            dropped.add(name)
            continue
        values[name] = params[name] = value
    return params
