"""The Optuna side: studies, samplers, pruners and priors, and the objective that runs a trial."""

from tuner._lazy import lazy_api

__getattr__, __dir__, __all__ = lazy_api(__name__, {
    "_best": ("BEST_VALUE_ATTR", "best_epoch_of", "best_of", "best_value_of", "is_maximized", "pruned_note", "rank",
              "ranked", "study_best", "study_ranked"),
    "_budget": ("StudyControl", "request_stop"),
    "_freeze_thaw": ("PROMOTED_AT_ATTR", "PROMOTED_FROM_ATTR", "PromotedPass", "is_paused", "promotable",
                     "waiting_promotion"),
    "_head_stage": ("check_head_stage",),
    "_note": ("study_note",),
    "_objective": ("Objective", "make_objective"),
    "_samplers": ("make_pruner", "make_sampler"),
    "_study": (
        "CONFIG_ATTR",
        "CREATED_ATTR",
        "budget_left",
        "config_from_attrs",
        "finished_count",
        "set_up_new_study",
        "stored_attrs",
        "stored_config",
        "study_space",
        "within_budget",
    ),
    "_study_progress": ("StudyProgress", "read_progress", "span_of", "study_progress"),
})
