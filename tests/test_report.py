"""`tuner report` on studies whose trials are written here (complete, pruned, early-stopped): the figures'
structure (a step line, integer epochs, labelled categorical axes, the importances' trial count),
the page (in headless Chromium: a screenshot, one table row per trial, sorting on a click; every study
value escaped), what importances need while they are not available, a study with no finished trial,
and no library warning on the terminal."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import optuna
import pytest
from click.testing import CliRunner
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState
from PIL import Image

from conftest import headless
from tuner.cli import cli
from tuner.shipping._report_data import (
    Finished,
    Importances,
    NotAvailable,
    Row,
    finished_trials,
    key_params,
    measure_importances,
    too_few_trials,
)
from tuner.shipping._report_page import Section, Summary, page
from tuner.shipping._report_figures import curves_figure, history_figure, importances_figure, parallel_figure
from tuner.space._space import load_space
from tuner.service._storage import StorageSettings, open_storage
from tuner.config import StudyConfig
from tuner.service._open import create_study

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DISTRIBUTIONS = {"freeze": CategoricalDistribution(["head", "last_blocks"]),
                 "lr": FloatDistribution(1e-4, 1e-1, log=True),
                 "batch_size": CategoricalDistribution([32, 64, 128])}


def empty_study(url: str, name: str, space: Path) -> optuna.Study:
    loaded = load_space(str(space))
    config = StudyConfig(space_name=loaded.name, space_text=loaded.text, data="digits", model="resnet18",
                         weights="none", image_size=16, n_trials=20, warm_start=False)
    return create_study(open_storage(StorageSettings(url=url), heartbeat=False), name, config, note="# test")


def add(study: optuna.Study, number: int, state: TrialState, curve: list[float], stop_reason: str) -> None:
    params = {"freeze": ("head", "last_blocks")[number % 2], "lr": 10 ** (-4 + 3 * (number % 12) / 11),
              "batch_size": (32, 64, 128)[number % 3]}
    study.add_trial(optuna.trial.create_trial(
        state=state, params=params, distributions=DISTRIBUTIONS,
        value=curve[-1] if state == TrialState.COMPLETE else None,
        intermediate_values=dict(enumerate(curve, 1)), user_attrs={"stop_reason": stop_reason}))


@pytest.fixture
def mixed(tmp_path, tiny_space):
    """12 trials: complete ones (one early-stopped), pruned ones, and a FAIL that plots leave out."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = empty_study(url, "mixed", tiny_space)
    for n in range(12):
        if n % 4 == 3:
            add(study, n, TrialState.PRUNED, [0.2 + 0.01 * n], "pruned")
        elif n == 5:
            add(study, n, TrialState.COMPLETE, [0.5, 0.7, 0.69, 0.68], "early_stopped")
        else:
            add(study, n, TrialState.COMPLETE, [0.3 + 0.02 * n, 0.4 + 0.03 * n, 0.45 + 0.03 * n], "completed")
    study.add_trial(optuna.trial.create_trial(state=TrialState.FAIL))
    return url, study


def test_history_is_a_step_line_of_the_best_and_shows_pruned_trials(mixed):
    _, study = mixed
    figure, _ = history_figure(finished_trials(study), "val_accuracy", maximize=True)
    axes = figure.axes[0]
    (best,) = axes.lines
    assert best.get_drawstyle() == "steps-post"
    xs, ys = best.get_data()
    assert list(ys) == sorted(ys)  # never goes down when maximizing
    assert ys[-1] == pytest.approx(0.45 + 0.03 * 10)  # trial 10 is the best complete trial
    labels = [text.get_text() for text in axes.get_legend().get_texts()]
    assert labels == ["best so far", "complete (9)", "pruned (3), at its last epoch"]


def test_learning_curves_have_integer_epochs_and_mark_pruned_early_stopped_and_best(mixed):
    _, study = mixed
    figure, _ = curves_figure(finished_trials(study), "val_accuracy", maximize=True)
    axes = figure.axes[0]
    figure.canvas.draw()
    ticks = [t for t in axes.get_xticks() if axes.get_xlim()[0] <= t <= axes.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks)
    labels = [text.get_text() for text in axes.get_legend().get_texts()]
    assert labels == ["complete", "pruned", "early stopped", "best (trial 10)"]
    markers = [line.get_marker() for line in axes.lines]
    assert markers.count("x") == 3 and markers.count("s") == 1


def test_parallel_coordinates_label_categorical_axes_with_their_choices(mixed):
    _, study = mixed
    names = ["batch_size", "freeze", "lr"]
    figure, _ = parallel_figure(finished_trials(study), study, "val_accuracy", maximize=True, names=names)
    axes = figure.axes[0]
    assert [t.get_text() for t in axes.get_xticklabels()] == [*names, "val_accuracy"]
    texts = {t.get_text() for t in axes.texts}
    assert {"32", "64", "128", "head", "last_blocks"} <= texts
    # On a white background, one line per finished trial with a value (the FAIL is left out).
    assert axes.get_facecolor()[:3] == (1.0, 1.0, 1.0)
    assert len([line for line in axes.lines if len(line.get_xdata()) == 4]) == 12


def test_importances_state_their_trial_count_and_warn_below_ten(mixed, tmp_path, tiny_space):
    _, study = mixed
    figure, note = importances_figure(measure_importances(study), "val_accuracy")
    assert note == "Computed from 9 completed trials. With fewer than 10 completed trials these importances " \
                   "are mostly noise."
    assert figure.axes[0].get_title() == "Parameter importances from 9 completed trials (fewer than 10: mostly noise)"
    for n in range(12, 14):
        add(study, n, TrialState.COMPLETE, [0.5], "completed")
    figure, note = importances_figure(measure_importances(study), "val_accuracy")
    assert note == "Computed from 11 completed trials."


def test_report_writes_the_page_and_its_pngs_with_no_warning_on_the_terminal(mixed, tmp_path):
    url, _ = mixed
    out = tmp_path / "report"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    done = subprocess.run([sys.executable, "-m", "tuner", "report", "--study", "mixed", "--storage", url,
                           "--out", str(out)], capture_output=True, text=True, timeout=300, env=env)
    assert (done.returncode, done.stdout, done.stderr) == (0, f"wrote {out / 'index.html'}\n", "")
    index = (out / "index.html").read_text()
    assert "Computed from 9 completed trials." in index and "Not available" not in index
    for name in ("optimization_history", "learning_curves", "parallel_coordinate", "param_importances"):
        assert f'<img src="{name}.png"' in index
        assert (out / f"{name}.png").read_bytes()[:8] == PNG_MAGIC
        with Image.open(out / f"{name}.png") as image:
            assert image.size[0] >= 900 and image.size[1] >= 250


def test_report_on_a_study_with_no_finished_trial_is_an_error_and_writes_nothing(tmp_path, tiny_space):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = empty_study(url, "fresh", tiny_space)
    study.add_trial(optuna.trial.create_trial(state=TrialState.FAIL))
    out = tmp_path / "report"
    result = CliRunner().invoke(cli, ["report", "--study", "fresh", "--storage", url, "--out", str(out)])
    assert (result.exit_code, result.stderr) == (1, "Error: study 'fresh' has no finished trial yet\n")
    assert not out.exists()


def test_a_lone_finished_trial_gets_history_and_curves_and_says_why_the_rest_is_missing(tmp_path, tiny_space):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = empty_study(url, "one", tiny_space)
    add(study, 0, TrialState.COMPLETE, [0.5, 0.6], "completed")
    out = tmp_path / "report"
    result = CliRunner().invoke(cli, ["report", "--study", "one", "--storage", url, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.glob("*.png")) == ["learning_curves.png", "optimization_history.png"]
    index = (out / "index.html").read_text()
    assert "Not available yet: needs two finished trials whose parameters differ" in index
    assert ("Not available yet: needs 1 more completed trial (Optuna&#x27;s importance evaluator needs at least 2, "
            "this study has 1)") in index


def raising(error: Exception):
    def compute(study):
        raise error

    return compute


def test_importances_of_equal_values_are_not_available_yet(mixed):
    _, study = mixed
    error = RuntimeError("Encountered zero total variance in all trees.")  # fANOVA on equal values
    importances = measure_importances(study, compute=raising(error))
    assert (importances.values, importances.unavailable) == ({}, str(error))
    with pytest.raises(NotAvailable, match=str(error)):
        importances_figure(importances, "val_accuracy")


@pytest.mark.parametrize("error", [ValueError("x must be positive"), ZeroDivisionError("division by zero")])
def test_a_value_error_with_enough_completed_trials_is_raised_not_shown_as_not_available(mixed, error):
    """The study has 9 completed trials: the error is real, not 'come back later'."""
    _, study = mixed
    with pytest.raises(type(error), match=str(error)):
        measure_importances(study, compute=raising(error))


@pytest.mark.parametrize(("completed", "too_few"), [(1, True), (2, False)])
def test_a_value_error_means_too_few_trials_only_below_two_completed(completed, too_few):
    study = optuna.create_study(direction="maximize")
    for value in range(completed):
        study.add_trial(optuna.trial.create_trial(value=float(value)))
    assert too_few_trials(ValueError("x"), study) is too_few


def test_other_runtime_errors_are_raised_not_shown_as_not_available(mixed):
    _, study = mixed
    with pytest.raises(RuntimeError, match="Matplotlib backend failed"):
        measure_importances(study, compute=raising(RuntimeError("Matplotlib backend failed")))


# Click the value column's header twice, as a person would: ascending, then descending.
CLICK_VALUE_TWICE = """<script>
const header = document.querySelectorAll("#trial-table th")[2];
header.click();
header.click();
</script>"""


def shown_value(trial) -> float | None:
    """The table's value: a complete trial's own, else its last reported epoch's (none for a FAIL)."""
    if trial.state == TrialState.COMPLETE:
        return trial.value
    reported = sorted(trial.intermediate_values.items())
    return reported[-1][1] if reported else None


def test_the_page_renders_in_chromium_with_one_row_per_trial_sorted_by_a_click(mixed, tmp_path, chromium,
                                                                               test_artifacts):
    url, study = mixed
    out = tmp_path / "report"
    result = CliRunner().invoke(cli, ["report", "--study", "mixed", "--storage", url, "--out", str(out)])
    assert result.exit_code == 0, result.output
    shot = test_artifacts / "report.png"
    headless(chromium, "--hide-scrollbars", "--window-size=1280,3400", f"--screenshot={shot}",
             (out / "index.html").as_uri())
    with Image.open(shot) as image:
        assert image.size == (1280, 3400)
        assert len(image.convert("RGB").getcolors(1 << 24)) > 500  # text, tables and plots: not a blank page
    clicked = out / "clicked.html"
    clicked.write_text((out / "index.html").read_text(encoding="utf-8") + CLICK_VALUE_TWICE, encoding="utf-8")
    dom = headless(chromium, "--dump-dom", clicked.as_uri())
    body = re.search(r'<table class="sortable" id="trial-table">.*?<tbody>(.*?)</tbody>', dom, re.S).group(1)
    numbers = [int(n) for n in re.findall(r'<tr[^>]*><td class="n">(\d+)</td>', body)]
    trials = study.get_trials()
    assert len(trials) == 13 and sorted(numbers) == [t.number for t in trials]  # one row per trial, FAIL too
    # Descending by value; the FAIL, with no value, last whatever the direction.
    scored = sorted((t for t in trials if shown_value(t) is not None), key=lambda t: -shown_value(t))
    assert numbers == [t.number for t in scored] + [12]
    assert re.search(r'<th class="n" aria-sort="descending">val_accuracy</th>', dom)
    assert '<tr class="best"><td class="n">10</td>' in dom


@pytest.mark.parametrize(("values", "pruned", "unavailable"), [
    ([], 2, "needs 2 more completed trials (Optuna&#x27;s importance evaluator needs at least 2, this study has 0)"),
    ([0.6, 0.6, 0.6], 0, "all 3 completed trials have the same value; importances need a completed trial with a "
                         "different one"),
])
def test_importances_not_available_yet_say_what_they_need(tmp_path, tiny_space, values, pruned, unavailable):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = empty_study(url, "few", tiny_space)
    for number, value in enumerate(values):
        add(study, number, TrialState.COMPLETE, [0.5, value], "completed")
    for number in range(len(values), len(values) + pruned):
        add(study, number, TrialState.PRUNED, [0.4], "pruned")
    out = tmp_path / "report"
    result = CliRunner().invoke(cli, ["report", "--study", "few", "--storage", url, "--out", str(out)])
    assert result.exit_code == 0, result.output
    index = (out / "index.html").read_text()
    assert f"<h2>Parameter importances</h2><p class=\"note\">Not available yet: {unavailable}</p>" in index
    # Without importances, the parallel coordinates show the parameters that usually matter most, in that order.
    assert not (out / "param_importances.png").exists() and (out / "parallel_coordinate.png").exists()


def finished(number: int, **params) -> Finished:
    return Finished(number, TrialState.COMPLETE, 0.5, (), params, None)


VARIED = [finished(0, freeze="head", lr=0.1, a=1, b=1, c=1, d=1, fixed=3),
          finished(1, freeze="full", lr=0.2, a=2, b=2, c=2, d=2, fixed=3)]


@pytest.mark.parametrize(("importances", "limit", "expected"), [
    ({"d": 0.4, "a": 0.3, "lr": 0.2, "c": 0.05, "freeze": 0.03, "b": 0.02}, 5, ["d", "a", "lr", "c", "freeze"]),
    ({"d": 0.9, "a": 0.1}, 4, ["d", "a", "b", "c"]),  # then the others, by name
    ({}, 5, ["freeze", "lr", "a", "b", "c"]),  # not available yet: the usual suspects first
    ({}, 10, ["freeze", "lr", "a", "b", "c", "d"]),  # never a parameter that did not vary
])
def test_key_parameters_are_the_most_important_else_the_usual_ones(importances, limit, expected):
    assert key_params(VARIED, Importances(importances, 2), limit) == expected


def test_every_value_from_the_study_is_escaped():
    evil = "<script>alert(1)</script>"
    row = Row(0, "complete", 0.5, False, 2, "completed", {"<b>p</b>": evil, "lr": 0.000123456})
    text = page(Summary('<i>s</i> & "q"', "<m>", "maximize", {"complete": 1}, row), [row],
                (["<b>p</b>"], "<s>why</s>"), [Section("History", "h.png", "<u>note</u>", (1000, 550))])
    assert "<script>alert" not in text and "<b>p</b>" not in text and "<i>s</i>" not in text
    assert "<m>" not in text and "<u>" not in text and "<s>" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text and "Study &lt;i&gt;s&lt;/i&gt; &amp; &quot;q&quot;" in text
    assert "<td>0.0001235</td>" in text  # the best configuration at 4 significant digits
    assert '<img src="h.png" alt="History" width="1000" height="550">' in text
