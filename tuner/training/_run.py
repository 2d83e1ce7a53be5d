"""Builds one run, untrained: model, freeze, cached features, optimizer, schedule, loss and loaders."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tuner.progress import Progress
from tuner.training._batches import ImageBatches, PlacedImages, TensorBatches, eval_transform, train_transform
from tuner.training._augment import AugmentConfig
from tuner.training._data import ImageData
from tuner.training._features import CachedFeatures, FeatureCache
from tuner.training._hyperparams import Hyperparams
from tuner.training._loop import (
    EarlyStopping,
    Runtime,
    compile_network,
    free_device_memory,
    make_loss,
    make_optimizer,
    make_scheduler,
    place_model,
    recompile_limit_hits,
)
from tuner.training._models import BuiltModel, ModelSpec, build_model, freeze, reset_parameters, set_train_mode
from tuner.training._seeds import derive_seed
from tuner.training._state import TrainingState
from tuner.training._unfreezing import GradualUnfreezing


@dataclass(frozen=True)
class RunInputs:
    """What every run of a study shares: the data and where its images sit, the device, the
    feature cache, and the study-wide settings a run reads."""

    data: ImageData
    images: PlacedImages
    runtime: Runtime
    cache: FeatureCache | None
    model: str
    weights: str
    image_size: int
    seed: int  # the study's: every run starts from the same backbone
    num_workers: int | None
    compile: bool
    progress: Progress

    @property
    def backbone_source(self) -> tuple[str, str, int]:
        """Where every run's untrained backbone comes from: build_run seeds it by the study's seed."""
        return self.model, self.weights, self.seed


class Run:
    """One run's parts: the network and its loss, its batches, and the TrainingState training changes."""

    def __init__(self, inputs: RunInputs, hp: Hyperparams, seed: int) -> None:
        self.inputs = inputs
        self.hp = hp
        self.seed = seed
        self.data = inputs.data
        self.runtime = inputs.runtime
        self.unfreezing = GradualUnfreezing(hp.unfreeze_every) if hp.freeze == "gradual" else None
        self.built: BuiltModel | None = None
        self.model: torch.nn.Module | None = None
        self.net: torch.nn.Module | None = None
        self.aug: AugmentConfig | None = None
        self.features: CachedFeatures | None = None
        self.loss_fn: torch.nn.Module | None = None
        self.state: TrainingState | None = None
        self.train_loader: ImageBatches | TensorBatches | None = None
        self.val_loader: ImageBatches | TensorBatches | None = None
        self.recompile_hits: int | None = None  # dynamo's count when this run's network was compiled

    def compile_fell_back(self) -> bool:
        """Whether torch stopped compiling during this run (it hit its recompile limit) and ran
        code uncompiled; False for a run that was never compiled."""
        return self.recompile_hits is not None and recompile_limit_hits() > self.recompile_hits

    def epoch_loader(self, epoch: int) -> ImageBatches | TensorBatches:
        """This epoch's training batches: images, or one cached view of their features."""
        if self.features is None:
            return self.train_loader
        view = derive_seed(self.seed, epoch, "view") % len(self.features.train_views)
        return self.feature_loader(self.features.view(view), self.data.train_targets, train=True)

    def feature_loader(self, features: torch.Tensor, targets: torch.Tensor, *, train: bool) -> TensorBatches:
        return TensorBatches(
            (features, targets), self.hp.batch_size, shuffle=train,
            generator=self.state.generator if train else None,
            drop_last=train and len(features) > self.hp.batch_size,
        )

    def image_loader(self, *, train: bool) -> ImageBatches:
        mean, std = self.built.mean, self.built.std
        # Images and targets come from one placed split: always on the same device.
        split = self.inputs.images.train if train else self.inputs.images.val
        transform = train_transform(self.aug, mean, std) if train else eval_transform(mean, std)
        return ImageBatches(
            split.images, split.targets, transform, self.runtime.device, self.hp.batch_size,
            shuffle=train, generator=self.state.generator if train else None,
            # A last batch of one sample breaks BatchNorm in train mode.
            drop_last=train and len(split.images) > self.hp.batch_size,
            num_workers=self.num_workers(),
        )

    def num_workers(self) -> int:
        if self.inputs.num_workers is not None:
            return self.inputs.num_workers
        # Loader processes only pay off when batches come from host memory to a GPU;
        # images kept on the GPU, or a CPU run, slice batches faster in this process.
        return 4 if self.runtime.is_cuda and self.inputs.images.device.type == "cpu" else 0

    def set_train_mode(self) -> None:
        if self.hp.freeze == "head":
            # A frozen backbone is a fixed feature extractor: eval mode throughout (BatchNorm
            # statistics and any dropout inside it), exactly as the cached features were made.
            self.model.eval()
            self.built.head.train()  # what follows the head (squeezenet's pooling) holds no state
        else:
            set_train_mode(self.model)

    def restore(self, checkpoint: dict) -> None:
        """Go on from a checkpoint of this run's lineage."""
        self.state.load_state_dict(checkpoint)
        if self.unfreezing is not None:
            self.unfreezing.restored(self)

    def release_memory(self) -> None:
        """Drop every reference this run holds to device memory, then free it.

        empty_cache() can only return blocks no tensor uses: the model, its gradients, the
        optimizer's state and the loaders (persistent loader processes too) go first.
        """
        self.state.release()
        for name in ("net", "model", "built", "loss_fn", "features", "train_loader", "val_loader"):
            setattr(self, name, None)
        free_device_memory(self.runtime)


def build_run(inputs: RunInputs, hp: Hyperparams, seed: int) -> Run:
    """The run of `hp` with its own `seed`, on the inputs' device. Raises torch's out-of-memory
    error when the device cannot hold it (the model moves there; features may be extracted there)."""
    run = Run(inputs, hp, seed)
    # Every trial of a study starts from the same backbone (it matters for --weights none),
    # so cached features are shared; only the new head's initialisation is the trial's own.
    torch.manual_seed(inputs.seed)
    run.built = build_model(ModelSpec(name=inputs.model, weights=inputs.weights,
                                      num_classes=inputs.data.num_classes, dropout=hp.dropout))
    torch.manual_seed(seed)
    reset_parameters(run.built.head)
    backbone, head = freeze(run.built, hp.freeze, hp.unfreeze_blocks)
    run.model = place_model(run.built.model, inputs.runtime)
    run.aug = AugmentConfig.from_params(hp.__dict__)
    run.features = cached_features(run)
    # With cached features only the head runs; otherwise the whole model does.
    run.net = run.built.on_features if run.features is not None else run.model
    if inputs.compile:
        # Only the network that runs is wrapped: run.model stays the plain module, so
        # state_dict() and checkpoints keep their keys (no `_orig_mod.` prefix).
        run.recompile_hits = recompile_limit_hits()
        run.net = compile_network(run.net)
    optimizer = make_optimizer(hp, backbone, head)
    scheduler = make_scheduler(hp, optimizer)
    scaler = inputs.runtime.grad_scaler()
    run.loss_fn = make_loss(hp, inputs.data.train_targets, inputs.data.num_classes, inputs.data.multilabel,
                            inputs.runtime.device)
    run.state = TrainingState(run.model, optimizer, scheduler, scaler, EarlyStopping(hp.patience), torch.Generator())
    if run.features is not None:
        run.train_loader = run.epoch_loader(1)
        run.val_loader = run.feature_loader(run.features.val, inputs.data.val_targets, train=False)
    else:
        run.train_loader = run.image_loader(train=True)
        run.val_loader = run.image_loader(train=False)
    return run


def cached_features(run: Run) -> CachedFeatures | None:
    """freeze=head with the cache on: the frozen backbone's features, computed once per study and machine."""
    if run.hp.freeze != "head" or run.inputs.cache is None:
        return None
    inputs = run.inputs
    return inputs.cache.get(run.built, inputs.model, inputs.data, inputs.image_size, run.aug,
                            source=inputs.backbone_source)
