"""A study's result shipped: the best trial retrained into a model folder, inference, the report."""

from tuner._lazy import lazy_api

__getattr__, __dir__, __all__ = lazy_api(__name__, {
    "_inference": ("confusion_png", "evaluate_model", "predict", "predictions_rows"),
    "_model_folder": ("load_model",),
    "_report": ("write_report",),
    "_retrain": ("RetrainRequest", "check_out", "retrain"),
})
