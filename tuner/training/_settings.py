"""What the trainer is given, derived from a study's config and this machine's options by one function each."""

from __future__ import annotations

from dataclasses import dataclass

from tuner.config import MachineOptions, StudyConfig, default
from tuner.training._data_config import DataConfig, gib_to_bytes


@dataclass(frozen=True)
class TrialSettings:
    """Study-wide settings every trial of a study shares (defaults: tuner.config's)."""

    model: str
    weights: str = default("weights")
    image_size: int = default("image_size")
    device: str = default("device")
    seed: int = default("seed")
    max_epochs: int | None = default("max_epochs")
    num_workers: int | None = default("num_workers")
    # Head-only trials train on cached backbone features: K augmented views per image
    # (0 turns the cache off). The folder is local to the machine.
    cache_views: int = default("cache_views")
    cache_dir: str | None = default("cache_dir")
    compile: bool = default("compile")  # machine-local: see MachineOptions


def trial_settings(config: StudyConfig, machine: MachineOptions) -> TrialSettings:
    """The trainer's settings for a study's trials on this machine."""
    return TrialSettings(
        model=config.model, weights=config.weights, image_size=config.image_size, device=machine.device,
        seed=config.seed, max_epochs=config.max_epochs, num_workers=machine.num_workers,
        cache_views=config.cache_views, cache_dir=machine.cache_dir, compile=machine.compile,
    )


def data_config(config: StudyConfig, machine: MachineOptions, spill_dir: str | None) -> DataConfig:
    """Where and how this machine decodes the study's images (`spill_dir`: where the images
    above the memory limit go; None: ~/.cache/tuner/decoded)."""
    return DataConfig(
        source=machine.data or config.data, image_size=config.image_size, val_fraction=config.val_fraction,
        seed=config.seed, memory_limit=gib_to_bytes(machine.memory_limit_gib), spill_dir=spill_dir,
    )
