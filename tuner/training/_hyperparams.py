"""A trial's hyperparameters as the trainer understands them, with their checks (no torch: the study layer reads them)."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any, Mapping

from tuner.errors import SpaceError, TunerError

if TYPE_CHECKING:
    from tuner.space import SearchSpace


@dataclass(frozen=True)
class Hyperparams:
    """A trial's sampled parameters with the trainer's defaults for anything the space omits."""

    freeze: str = "head"
    unfreeze_blocks: int = 1
    # freeze=gradual: one more backbone block, from the top, every unfreeze_every epochs.
    unfreeze_every: int = 1
    # probe: a fine-tuning trial first trains its head on cached backbone features (LP-FT).
    head_init: str = "random"
    lr: float = 1e-3
    backbone_lr: float | None = None
    optimizer: str = "adamw"
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    batch_size: int = 32
    epochs: int = 10
    scheduler: str = "none"
    step_size: int = 5
    step_gamma: float = 0.1
    plateau_factor: float = 0.1
    plateau_patience: int = 3
    cosine_min_lr_ratio: float = 0.0
    dropout: float = 0.0
    aug_crop_scale: float = 1.0
    aug_hflip: float = 0.0
    aug_rotation: float = 0.0
    aug_color_jitter: float = 0.0
    loss: str | None = None  # None: the data's own (bce_with_logits for multi-label, else cross_entropy)
    label_smoothing: float = 0.0
    class_weighting: str = "none"
    patience: int = 5

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_params(cls, params: Mapping[str, Any], *, max_epochs: int | None = None) -> "Hyperparams":
        unknown = sorted(set(params) - set(cls.names()))
        if unknown:
            raise TunerError(
                f"unknown hyperparameter {unknown[0]!r}; the trainer understands: {', '.join(cls.names())}"
            )
        # Checked before the cap: comparing a mistyped epochs value with max_epochs would
        # raise a TypeError instead of the message checked() gives.
        hp = cls(**params).checked()
        if max_epochs is not None and hp.epochs > max_epochs:
            hp = replace(hp, epochs=max_epochs)
        return hp

    def checked(self) -> "Hyperparams":
        for f in fields(self):
            problem = param_problem(f.name, getattr(self, f.name))
            if problem is not None:
                raise TunerError(problem)
        return self


_CHOICES = {
    "freeze": ("head", "last_blocks", "full", "gradual"),
    "head_init": ("random", "probe"),
    "optimizer": ("adam", "adamw", "sgd"),
    "scheduler": ("none", "step", "plateau", "cosine"),
    "loss": ("cross_entropy", "bce_with_logits"),
    "class_weighting": ("none", "balanced"),
}
# backbone_lr may be None (it then follows lr); when given, 0 or less is as wrong as for lr.
_POSITIVE = ("lr", "backbone_lr", "batch_size", "epochs", "patience", "unfreeze_every")
# Annotations are strings here (from __future__ import annotations): "int", "float | None", ...
_FIELD_TYPES = {f.name: f.type for f in fields(Hyperparams)}


def param_problem(name: str, value: Any) -> str | None:
    """Why `value` cannot be hyperparameter `name`, or None when it can.

    The type checks matter because a space file's fixed values and choices are not typed:
    YAML reads `1e-3` or `1.0e30` (no dot, or no exponent sign) as text, which used to
    reach the optimizer or a comparison and end the run with a TypeError traceback.
    """
    kind = _FIELD_TYPES[name]
    if name in _CHOICES:
        if value is None and "None" in kind:
            return None
        if not isinstance(value, str) or value not in _CHOICES[name]:
            return f"{name} must be one of {', '.join(_CHOICES[name])}, got {value!r}"
        return None
    if kind == "bool":
        ok, noun = isinstance(value, bool), "true or false"
    elif kind == "int":
        ok, noun = isinstance(value, int) and not isinstance(value, bool), "an integer"
    else:  # "float" or "float | None"
        is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
        ok, noun = is_number or (value is None and "None" in kind), "a number"
    if not ok:
        hint = " (YAML reads a number like 1e-3 as text: write 1.0e-3)" if _reads_as_number(value) else ""
        return f"{name} must be {noun}, got {value!r}{hint}"
    if name in _POSITIVE and value is not None and value <= 0:
        return f"{name} must be > 0, got {value!r}"
    return None


def check_space(space: SearchSpace) -> None:
    """Every parameter of the space must be one the trainer understands, with usable values."""
    known = Hyperparams.names()
    for name, branches in space.params.items():
        if name not in known:
            raise SpaceError(
                f"{space.source}: parameter {name!r} is not one the trainer understands "
                f"(known: {', '.join(known)})"
            )
        for branch in branches:
            # Fixed values and choices are untyped in the space file (YAML reads `1e-3` as
            # text); check them now rather than in the middle of the first trial that
            # samples them. A float/int range is checked by its high end: its type, and
            # that at least some of it is allowed (lr high 0 is not).
            values = branch.possible_values() if branch.type in ("fixed", "categorical") else (branch.high,)
            for value in values:
                problem = param_problem(name, value)
                if problem is not None:
                    raise SpaceError(f"{space.source}: {problem}")


def _reads_as_number(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        float(value)
    except ValueError:
        return False
    return True
