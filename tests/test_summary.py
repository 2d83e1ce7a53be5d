"""What a run says: the closing summary of `tuner run`/`tuner worker` (with next commands that run as
printed), the study's progress and ETA, and values at 4 significant digits in `tuner best` and the note."""

from __future__ import annotations

import re
import shlex

import optuna
import pytest
import yaml
from conftest import HEAD_ONLY_SPACE, TINY_SPACE, cli_invoke
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial
from test_service import library_study, with_password

from tuner.config import StudyConfig
from tuner.search._note import study_note
from tuner.search._study_progress import StudyProgress, TrialSpan, busy_time, study_progress
from tuner.service._storage import mask_url
from tuner.service._summary import next_commands
from tuner.space._space import load_space
from tuner.text import duration, significant

# --- the ETA: a pure function of the trials' spans ------------------------------------------

NOW = 1000.0


def done(start: float, end: float) -> TrialSpan:
    return TrialSpan(start, end, finished=True)


def running(start: float) -> TrialSpan:
    return TrialSpan(start, None, finished=False)


ETA_CASES = [
    pytest.param([], 10, StudyProgress(0, 10, 0.0, None), id="nothing started"),
    pytest.param([running(990)], 10, StudyProgress(0, 10, 10.0, None), id="no ETA before a trial finished"),
    pytest.param([TrialSpan(None, None, finished=False)], 10, StudyProgress(0, 10, 0.0, None), id="waiting only"),
    pytest.param([done(900, 910), done(910, 920), done(920, 930)], 10, StudyProgress(3, 10, 30.0, 70.0),
                 id="one worker: 10 s a trial, 7 left"),
    # Four workers in step: 4 trials in 10 s, so the 6 left take 15 s (not 6 x 10 s).
    pytest.param([done(900, 910)] * 4, 10, StudyProgress(4, 10, 10.0, 15.0), id="parallel workers"),
    # The night between the two trials, with no worker running, is not study time.
    pytest.param([done(0, 10), done(900, 910)], 4, StudyProgress(2, 4, 20.0, 20.0), id="a pause does not count"),
    # A running trial adds to the elapsed time, not to the rate: the ETA comes from finished trials.
    pytest.param([done(900, 910), running(910)], 3, StudyProgress(1, 3, 100.0, 20.0), id="running trial"),
    # A failed trial (a crash, a hand-back) spent time but finished nothing.
    pytest.param([TrialSpan(880, 900, finished=False), done(900, 910)], 3, StudyProgress(1, 3, 30.0, 20.0),
                 id="failed trial"),
    pytest.param([done(900, 910), done(910, 920)], 2, StudyProgress(2, 2, 20.0, 0.0), id="budget spent"),
    pytest.param([done(900, 910), done(910, 920)], 1, StudyProgress(2, 1, 20.0, 0.0), id="budget lowered below"),
]


@pytest.mark.parametrize("spans, n_trials, expected", ETA_CASES)
def test_study_progress_and_eta_from_finished_trials(spans, n_trials, expected):
    assert study_progress(spans, n_trials, NOW) == expected


@pytest.mark.parametrize("intervals, covered", [
    ([], 0.0), ([(0, 5)], 5.0), ([(0, 5), (3, 8)], 8.0), ([(0, 10), (2, 3)], 10.0), ([(5, 6), (0, 1)], 2.0),
])
def test_busy_time_counts_overlapping_runs_once(intervals, covered):
    assert busy_time(intervals) == covered


@pytest.mark.parametrize("progress, text", [
    (StudyProgress(0, 10, 0.0, None), "0/10 trials finished, 0s elapsed"),
    (StudyProgress(3, 10, 65.0, 130.0), "3/10 trials finished, 1m05s elapsed, ETA 2m10s"),
    (StudyProgress(1, 1, 3725.0, 0.0), "1/1 trial finished, 1h02m elapsed"),
])
def test_progress_text_shows_the_eta_only_while_trials_are_left(progress, text):
    assert progress.text() == text


@pytest.mark.parametrize("value, text", [
    (0.49273255210020583, "0.4927"), (0.0012345678, "0.001235"), (1.2e-05, "1.2e-05"), (0.9, "0.9"),
    (64, "64"), ("adam", "adam"), (True, "True"), (123456.7, "1.235e+05"),
])
def test_significant_keeps_4_digits_of_floats_only(value, text):
    assert significant(value) == text


@pytest.mark.parametrize("seconds, text", [(None, "-"), (0.4, "0s"), (59.9, "59s"), (65, "1m05s"), (7260, "2h01m")])
def test_duration(seconds, text):
    assert duration(seconds) == text


# --- the closing summary ----------------------------------------------------------------------

LR = FloatDistribution(1e-3, 1e-2, log=True)
OPTIMIZER = CategoricalDistribution(["adam", "sgd"])


def add_trial(study: optuna.Study, value: float, lr: float, state: TrialState = TrialState.COMPLETE) -> None:
    study.add_trial(create_trial(params={"lr": lr, "optimizer": "adam"}, distributions={"lr": LR, "optimizer": OPTIMIZER},
                                 value=value if state == TrialState.COMPLETE else None, state=state,
                                 intermediate_values={1: value}))


def spent_study(url: str, tiny_space) -> optuna.Study:
    """A study of 5 trials whose budget other workers spent: 4 complete, 1 pruned, 1 failed."""
    study = library_study(url, "flowers", tiny_space, n_trials=5, warm_start=False)
    for value, lr in [(0.5, 0.0012345678), (0.9372, 0.0049273255210020583), (0.8, 0.002), (0.9, 0.00987654321)]:
        add_trial(study, value, lr)
    add_trial(study, 0.3, 0.001, TrialState.PRUNED)
    add_trial(study, 0.0, 0.001, TrialState.FAIL)
    return study


def test_the_summary_names_the_study_its_storage_time_states_top_3_rounded_and_what_to_run_next(
        tiny_space, tmp_path):
    url = f"sqlite:///{tmp_path / 'tuner.db'}"
    spent_study(url, tiny_space)

    result = cli_invoke(["worker", "--study", "flowers", "--storage", url, "--quiet"])

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "finished 5/5 trials (0 run by this process)"
    assert re.fullmatch(rf"study flowers in {re.escape(url)}: wall time \d+s here, study time \d+s", lines[1]), lines[1]
    assert lines[2:] == [
        "trials: complete 4, pruned 1, fail 1",
        "top 3 of 4 completed trials by val_accuracy:",
        "  0.9372  trial 1: lr=0.004927 optimizer=adam",
        "  0.9000  trial 3: lr=0.009877 optimizer=adam",
        "  0.8000  trial 2: lr=0.002 optimizer=adam",
        "next:",
        f"  tuner retrain --study flowers --storage {url} --out model",
        f"  tuner report --study flowers --storage {url} --out report",
        f"  tuner dashboard --storage {url}",
    ]


def test_a_summary_without_a_completed_trial_says_so_and_offers_no_retrain(tiny_space, tmp_path):
    url = f"sqlite:///{tmp_path / 'tuner.db'}"
    add_trial(library_study(url, "s", tiny_space, n_trials=1, warm_start=False), 0.3, 0.001, TrialState.PRUNED)
    result = cli_invoke(["worker", "--study", "s", "--storage", url, "--quiet"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[2:] == [
        "trials: pruned 1", "no completed trial yet", "next:",
        f"  tuner report --study s --storage {url} --out report", f"  tuner dashboard --storage {url}",
    ]


@pytest.mark.parametrize("left, has_best, expected", [
    (0, True, ["tuner retrain --study s --storage 'sqlite:///a b.db' --out model",
               "tuner report --study s --storage 'sqlite:///a b.db' --out report",
               "tuner dashboard --storage 'sqlite:///a b.db'"]),
    (3, False, ["tuner worker --study s --storage 'sqlite:///a b.db'",
                "tuner report --study s --storage 'sqlite:///a b.db' --out report",
                "tuner dashboard --storage 'sqlite:///a b.db'"]),
])
def test_next_commands_offer_more_workers_while_trials_are_left_and_quote_for_the_shell(left, has_best, expected):
    assert list(next_commands("s", "sqlite:///a b.db", left=left, has_best=has_best)) == expected


def test_next_commands_mask_the_password_and_quote_for_the_shell():
    url = "postgresql+psycopg://u:hunter2@db/tuner?sslmode=require&password=hunter2"
    lines = next_commands("my study", url, left=0, has_best=True)
    masked = shlex.quote(mask_url(url))
    assert lines[0] == f"tuner retrain --study 'my study' --storage {masked} --out model"
    assert all("hunter2" not in line for line in lines)
    assert shlex.split(lines[0])[4:6] == ["--storage", "postgresql+psycopg://u:***@db/tuner?password=***&sslmode=require"]


def test_summary_and_create_on_a_storage_with_a_password_never_print_it(postgres_url, tiny_space, tmp_path):
    url = with_password(postgres_url, "userinfo")
    created = cli_invoke(["create", "--study", "pw", "--space", str(tiny_space), "--data", "digits", "--weights",
                          "none", "--n-trials", "1", "--no-warm-start", "--storage", url,
                          "--artifacts", str(tmp_path / "art")])
    assert created.exit_code == 0, created.output
    masked = mask_url(url)
    assert created.stdout.splitlines()[1] == f"start workers with: tuner worker --study pw --storage {shlex.quote(masked)}"
    study = optuna.load_study(study_name="pw", storage=postgres_url)
    add_trial(study, 0.5, 0.002)
    result = cli_invoke(["worker", "--study", "pw", "--storage", url, "--quiet"])
    assert result.exit_code == 0, result.output
    assert "hunter2" not in result.output
    assert result.stdout.splitlines()[1].startswith(f"study pw in {masked}: ")
    assert result.stdout.splitlines()[-1] == ("  (*** stands for the storage's password: put it back, or set "
                                              "TUNER_STORAGE and leave out --storage)")


def test_the_printed_retrain_command_runs_as_printed_and_the_log_has_the_eta(tmp_path, monkeypatch):
    space = tmp_path / "tiny.yaml"
    space.write_text(HEAD_ONLY_SPACE)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    ran = cli_invoke(["run", "--study", "tiny", "--space", str(space), "--data", "digits", "--image-size", "16",
                      "--weights", "none", "--max-epochs", "1", "--n-trials", "2", "--storage", url,
                      "--artifacts", str(tmp_path / "artifacts"), "--device", "cpu"])
    assert ran.exit_code == 0, ran.output
    # Not a terminal: one log line per finished trial with the study's progress, the ETA once one finished.
    finished = [line for line in ran.stderr.splitlines() if re.search(r"trial \d (COMPLETE|PRUNED)", line)]
    assert len(finished) == 2, ran.stderr
    assert re.search(r"; 1/2 trials finished, \d+s elapsed, ETA \d+s; best ", finished[0]), finished[0]
    assert re.search(r"; 2/2 trials finished, \d+s elapsed; best ", finished[1]), finished[1]
    printed = [line.strip() for line in ran.stdout.splitlines() if line.strip().startswith("tuner retrain ")]
    assert printed == [f"tuner retrain --study tiny --storage {url} --out model"]

    monkeypatch.chdir(tmp_path)
    retrained = cli_invoke(shlex.split(printed[0])[1:] + ["--quiet"])

    assert retrained.exit_code == 0, retrained.output
    assert (tmp_path / "model" / "model.json").is_file()


# --- tuner best and the dashboard note: 4 significant digits --------------------------------

EDGE = 0.0123456789  # a range edge that 4 digits round out of the range: 0.01235 > EDGE


def test_best_shows_4_digits_and_its_yaml_keeps_every_digit_so_that_enqueue_takes_a_value_at_the_edge(tmp_path):
    assert float(significant(EDGE)) > EDGE
    space = tmp_path / "edge.yaml"
    space.write_text(TINY_SPACE.replace("high: 1.0e-2", f"high: {EDGE}"))
    url = f"sqlite:///{tmp_path / 'study.db'}"
    source = library_study(url, "source", space, n_trials=2, warm_start=False)
    source.add_trial(create_trial(params={"lr": EDGE}, distributions={"lr": FloatDistribution(1e-3, EDGE, log=True)},
                                  value=0.87654321))

    table = cli_invoke(["best", "--study", "source", "--storage", url])
    assert table.stdout.splitlines() == ["study source: best val_accuracy = 0.8765 (trial 0)", "  lr: 0.01235"]
    as_json = cli_invoke(["best", "--study", "source", "--storage", url, "--format", "json"])
    assert yaml.safe_load(as_json.stdout)["params"] == {"lr": EDGE}
    as_yaml = cli_invoke(["best", "--study", "source", "--storage", url, "--format", "yaml"])
    assert f"    value: {EDGE}  # 0.01235" in as_yaml.stdout.splitlines()
    assert yaml.safe_load(as_yaml.stdout)["params"] == {"lr": {"type": "fixed", "value": EDGE}}

    (tmp_path / "best.yaml").write_text(as_yaml.stdout)
    library_study(url, "target", space, n_trials=2, warm_start=False)
    queued = cli_invoke(["enqueue", "--study", "target", "--storage", url, "--params", str(tmp_path / "best.yaml")])
    assert queued.exit_code == 0, queued.output
    (trial,) = optuna.load_study(study_name="target", storage=url).get_trials()
    assert trial.system_attrs["fixed_params"] == {"lr": EDGE}


def test_the_dashboard_note_shows_the_space_at_4_digits(tmp_path):
    path = tmp_path / "long.yaml"
    path.write_text(TINY_SPACE.replace("high: 1.0e-2", f"high: {EDGE}").replace("low: 0.8", "low: 0.812345678"))
    space = load_space(str(path))
    config = StudyConfig(space_name=space.name, space_text=space.text, data="digits", model="resnet18",
                         weights="none", image_size=16, n_trials=2, prior_weight=2.5)
    note = study_note(config, space, "digits")
    assert "| `lr` | float | 0.001 .. 0.01235 (log) | always | - |" in note
    assert "| `momentum` | float | 0.8123 .. 0.95 | optimizer = 'sgd' | - |" in note
    assert str(EDGE) not in note
