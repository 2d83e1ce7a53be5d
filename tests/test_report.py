"""`tuner report`'s plot sections: a study too small for a plot says so; any other error is raised."""

from __future__ import annotations

import matplotlib
import optuna
import pytest

from tuner.report import render_plot

matplotlib.use("Agg")


def raising(error: Exception):
    def plot(study, **kwargs):
        raise error

    return plot


@pytest.mark.parametrize("error", [
    ValueError("Cannot evaluate parameter importances with only a single trial."),
    RuntimeError("Encountered zero total variance in all trees."),  # fANOVA on equal values
    ZeroDivisionError("division by zero"),
])
def test_a_plot_the_study_is_too_small_for_is_not_available_yet(tmp_path, error):
    section = render_plot(optuna.create_study(), tmp_path, "x", "X", raising(error), "m")
    assert section == f"<h2>X</h2><p>Not available yet: {error}</p>"


def test_other_runtime_errors_are_raised_not_shown_as_not_available(tmp_path):
    with pytest.raises(RuntimeError, match="Matplotlib backend failed"):
        render_plot(optuna.create_study(), tmp_path, "x", "X", raising(RuntimeError("Matplotlib backend failed")), "m")
