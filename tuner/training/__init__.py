"""The trainer: data, models and the training loop, knowing nothing of Optuna."""

from tuner._lazy import lazy_api

__getattr__, __dir__, __all__ = lazy_api(__name__, {
    "_batches": ("eval_transform", "place_images"),
    "_data": ("ImageData", "load_data", "load_labelled"),
    "_data_sources": ("IMAGE_EXTENSIONS", "describe_source"),
    "_decode": ("image_to_tensor", "read_image"),
    "_device_spec": ("parse_device",),
    "_epochs": ("fit", "val_logits"),
    "_features": ("FeatureCache", "FeatureCacheConfig", "default_cache_dir"),
    "_fingerprint": ("check_same_data", "data_fingerprint"),
    "_forward_memory": ("forward_bytes",),
    "_hyperparams": ("Hyperparams", "check_space"),
    "_loop": (
        "Diverged",
        "OutOfMemory",
        "Runtime",
        "fitting_loss",
        "free_device_memory",
        "make_runtime",
        "place_model",
        "resolve_device",
        "to_device",
        "training_device",
        "without_oom",
    ),
    "_models": ("ModelSpec", "build_model", "count_trainable"),
    "_probe": ("probe", "wants_probe"),
    "_run": ("Run", "RunInputs", "build_run"),
    "_seeds": ("derive_seed",),
    "_settings": ("TrialSettings", "data_config", "trial_settings"),
    "_sources": ("LITE0", "TIMM_PREFIX", "available_models"),
    "_spill": ("machine_ram",),
    "_state": ("TrainingState",),
    "_task": ("metric_name", "task_of"),
})
