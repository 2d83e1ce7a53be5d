"""The search space: the space file's format, its parsing and validation, and how it reads."""

from tuner._lazy import lazy_api

__getattr__, __dir__, __all__ = lazy_api(__name__, {
    "_describe": ("branch_prior", "branch_range", "branch_when", "rounded"),
    "_model": ("Branch", "Prior", "SearchSpace", "is_number", "same"),
    "_space": ("load_space", "parse_space", "shipped_spaces"),
})
