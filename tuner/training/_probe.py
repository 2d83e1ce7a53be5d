"""Probe, then fine-tune (LP-FT, arXiv 2202.10054): train a new head on frozen backbone features first."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch
from torch import nn

from tuner.training._batches import TensorBatches, eval_transform
from tuner.training._augment import AugmentConfig
from tuner.training._features import extract
from tuner.training._hyperparams import Hyperparams
from tuner.training._loop import Runtime, evaluate, train_one_epoch
from tuner.training._models import BuiltModel
from tuner.training._seeds import derive_seed

if TYPE_CHECKING:
    from tuner.training._run import Run

# The probe is a linear head on fixed features: the seed's head-only learning rate, and
# enough epochs to converge on a small data set. On cached features an epoch of it costs
# about 1% of an epoch of fine-tuning, so this is a fraction of one fine-tuning epoch.
PROBE_LR = 1e-3
PROBE_EPOCHS = 20


@dataclass(frozen=True)
class ProbeResult:
    """`seconds`: the head's training and evaluation; `extract_seconds`: the backbone passes
    that made its features outside the feature cache (0 when the cache gave them: the cache
    counts its own, FeatureCache.compute_seconds, so no second is counted twice)."""

    epochs: int
    seconds: float
    metric: float
    extract_seconds: float = 0.0

    def as_attr(self) -> dict[str, float]:
        return {"epochs": self.epochs, "seconds": round(self.seconds, 3), "val_metric": self.metric,
                "extract_seconds": round(self.extract_seconds, 3)}


def probe_head(built: BuiltModel, train: tuple[torch.Tensor, torch.Tensor],
               val: tuple[torch.Tensor, torch.Tensor], loss_fn: nn.Module, runtime: Runtime, *,
               batch_size: int, seed: int, multilabel: bool) -> ProbeResult:
    """Train the model's head in place on (features, targets); its own optimizer, so the trial's is untouched.

    The features run through `built.on_features` (the head and whatever the model does after
    it). Only the head's parameters are given to the optimizer: the features are fixed
    tensors, so no gradient can reach the backbone.
    """
    head, net = built.head, built.on_features
    started = time.monotonic()
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(head.parameters(), lr=PROBE_LR)
    features, targets = train
    batches = TensorBatches((features, targets), batch_size, shuffle=True, generator=generator,
                            drop_last=len(features) > batch_size)
    # Under fp16 autocast the head's small gradients underflow to zero without loss scaling,
    # as the trial's own training would: the probe scales its loss the same way.
    scaler = runtime.grad_scaler()
    head.train()
    for _ in range(PROBE_EPOCHS):
        train_one_epoch(net, batches, loss_fn, optimizer, runtime, scaler)
    result = evaluate(net, TensorBatches(val, batch_size), loss_fn, runtime, multilabel)
    head.train()
    return ProbeResult(PROBE_EPOCHS, time.monotonic() - started, result.metric)


def wants_probe(hp: Hyperparams) -> bool:
    return hp.head_init == "probe" and hp.freeze != "head"


def probe(run: Run) -> ProbeResult:
    """LP-FT, before the first epoch: train the run's head on the frozen backbone's features.

    The features are those head-only trials use without augmentation (one view), so
    with the cache on they are computed once per study and machine.
    """
    train, val, extract_seconds = probe_features(run)
    result = probe_head(
        run.built, (train, run.data.train_targets), (val, run.data.val_targets), run.loss_fn,
        run.runtime, batch_size=run.hp.batch_size, seed=derive_seed(run.seed, "probe"),
        multilabel=run.data.multilabel,
    )
    return replace(result, extract_seconds=extract_seconds)


def probe_features(run: Run) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(train features, val features, seconds spent extracting them here: 0 from the cache)."""
    inputs = run.inputs
    plain = AugmentConfig()
    if inputs.cache is not None:
        features = inputs.cache.get(run.built, inputs.model, run.data, inputs.image_size, plain,
                                    source=inputs.backbone_source)
        return features.view(0), features.val, 0.0
    started = time.monotonic()
    mean, std = run.built.mean, run.built.std
    train = extract(run.built, run.data.train_images, eval_transform(mean, std), run.runtime)
    val = extract(run.built, run.data.val_images, eval_transform(mean, std), run.runtime)
    return train, val, time.monotonic() - started
