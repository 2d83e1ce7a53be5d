"""Workers and storage: opening studies, running their trials in workers, and reading results."""

from tuner._lazy import lazy_api

__getattr__, __dir__, __all__ = lazy_api(__name__, {
    "_artifact_store": ("open_artifact_store",),
    "_lifecycle": ("delete", "describe_for_delete", "enqueue", "extend", "list_studies", "stop"),
    "_open": ("OpenedStudy", "open_for_reading", "open_for_work", "require_existing_sqlite"),
    "_prepare": ("prepare_study",),
    "_results": (
        "all_params",
        "best_as_space_yaml",
        "best_summary",
        "best_trial",
        "check_port",
        "epochs_note",
        "export_trials",
        "serve_dashboard",
        "study_status",
    ),
    "_storage": ("DEFAULT_STORAGE", "StorageSettings", "mask_url"),
    "_study_artifacts": ("publish_report",),
    "_supervisor": ("plan_processes", "supervise", "visible_gpu_count"),
    "_worker": ("Worker", "sampler_seed_for_worker"),
})
