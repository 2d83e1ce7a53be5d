"""Managing studies: `tuner studies`, `extend`, `stop`, `enqueue` and `delete` on SQLite and
PostgreSQL, with real subprocess workers for the commands that act on running workers."""

from __future__ import annotations

import json
import re
import sqlite3

import optuna
import pytest
import yaml
from click.testing import CliRunner
from optuna.trial import TrialState
from test_service import add_finished_trial, library_study
from test_workers import (
    RESUME_EPOCHS,
    RESUME_SPACE,
    create,
    finished_line,
    load,
    procs,  # noqa: F401  (the fixture: the worker processes a test starts, killed after it)
    wait_for,
)

from tuner.cli import cli
from tuner.service._storage import mask_url


def invoke(*args: str, input: str | None = None):
    return CliRunner().invoke(cli, list(args), input=input)


def resume_space(epochs: int) -> str:
    return RESUME_SPACE.replace(f"value: {RESUME_EPOCHS}}}", f"value: {epochs}}}")


def running_after(url: str, name: str, count: int, epoch: int = 1):
    trials = load(url, name).get_trials(states=(TrialState.RUNNING,))
    return len(trials) == count and all((t.user_attrs.get("epoch") or 0) >= epoch for t in trials) and trials


# --- tuner stop and tuner extend, with worker processes ---------------------------------------

def test_stop_makes_every_worker_hand_back_and_exit_0_and_a_later_worker_resumes(storage_url, tmp_path, procs):
    space = tmp_path / "resume.yaml"
    # Both trials must be running at once. A 12-epoch trial took 3 s, and on CI the second
    # worker joined 3 s after the first, when the first had finished: give the trials 60 epochs.
    space.write_text(resume_space(60))
    # No pruner: ASHA could prune one trial after epoch 1, before the stop.
    create(storage_url, "st", space, 2, tmp_path / "artifacts", "--no-warm-start", "--pruner", "none")
    workers = [procs.start("worker", "--study", "st", "--storage", storage_url) for _ in range(2)]
    wait_for(lambda: running_after(storage_url, "st", 2), 240, "both trials past epoch 1", procs, 0.05)

    stopped = invoke("stop", "--study", "st", "--storage", storage_url)

    assert stopped.exit_code == 0, stopped.output
    assert stopped.output == ("asked the workers of study st to stop (2 trials running); "
                              "`tuner worker --study st` resumes them later\n")
    assert [procs.wait(w, timeout=120) for w in workers] == [0, 0], procs.logs()
    for worker in workers:
        text = worker.log.read_text()
        assert re.search(r"finishing epoch \d+ of \d+ of trial \d, then handing it back$", text, re.MULTILINE), text
        assert "Ctrl-C again" not in text and "Traceback" not in text
    trials = load(storage_url, "st").get_trials()
    assert sorted(t.state.name for t in trials) == ["FAIL", "FAIL", "WAITING", "WAITING"]
    assert all(t.user_attrs["handed_back"] for t in trials if t.state == TrialState.FAIL)
    status = invoke("status", "--storage", storage_url)
    assert status.output.splitlines()[1] == "study st: 0/2 finished [handed back 2, waiting 2]; best val_accuracy none yet"

    later = procs.start("worker", "--study", "st", "--storage", storage_url)
    assert procs.wait(later, timeout=300) == 0, procs.logs()
    assert finished_line(later.log) == (2, 2, 2)
    text = later.log.read_text()
    originals = sorted(t.number for t in trials if t.state == TrialState.FAIL)
    resumed = sorted(int(n) for n in re.findall(r"trial \d+ resumes trial (\d+) from epoch \d+", text))
    assert resumed == originals, text
    status = invoke("status", "--storage", storage_url)
    assert re.fullmatch(r"study st: 2/2 finished \[(complete|pruned)[^\]]*handed back 2\]; .*",
                        status.output.splitlines()[1]), status.output
    assert "fail " not in status.output


def test_extend_raises_the_budget_of_a_running_worker(storage_url, tmp_path, procs):
    space = tmp_path / "resume.yaml"
    # The extend must land while trial 0 runs. On an idle machine its 12 epochs took about a
    # second, and it had finished before the extend (the worker then saw a budget of 1): 40.
    space.write_text(resume_space(40))
    create(storage_url, "ext", space, 1, tmp_path / "artifacts", "--no-warm-start")
    worker = procs.start("worker", "--study", "ext", "--storage", storage_url)
    wait_for(lambda: running_after(storage_url, "ext", 1), 240, "trial 0 past epoch 1", procs, 0.05)

    extended = invoke("extend", "--study", "ext", "--storage", storage_url, "--n-trials", "2")

    assert extended.exit_code == 0 and extended.output == "study ext: budget 1 -> 2 trials\n"
    assert procs.wait(worker, timeout=300) == 0, procs.logs()
    assert finished_line(worker.log) == (2, 2, 2)  # the worker that was running saw the new budget
    assert [t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in load(storage_url, "ext").trials] == [True] * 2
    below = invoke("extend", "--study", "ext", "--storage", storage_url, "--n-trials", "1")
    assert below.exit_code == 1
    assert below.output == ("Error: --n-trials 1 is below the 2 trials study 'ext' has finished already "
                            "(a budget counts finished trials)\n")
    assert load(storage_url, "ext").user_attrs["tuner_config"]["n_trials"] == 2


# --- tuner enqueue ------------------------------------------------------------------------

def test_enqueue_takes_the_output_of_best_as_yaml_from_another_study(storage_url, tiny_space, tmp_path):
    source = library_study(storage_url, "source", tiny_space, n_trials=2, warm_start=False)
    add_finished_trial(source, 0.75, fixed_params={"patience": 5})
    best = invoke("best", "--study", "source", "--storage", storage_url, "--format", "yaml")
    path = tmp_path / "best.yaml"
    path.write_text(best.output)
    library_study(storage_url, "target", tiny_space, n_trials=3, warm_start=False)

    result = invoke("enqueue", "--study", "target", "--storage", storage_url, "--params", str(path))

    assert result.exit_code == 0, result.output
    assert result.output == "queued in study target:\n  lr: 0.005\n"
    (queued,) = load(storage_url, "target").get_trials()
    assert queued.state == TrialState.WAITING and queued.system_attrs["fixed_params"] == {"lr": 0.005}
    as_json = invoke("enqueue", "--study", "target", "--storage", storage_url, "--params", str(path),
                     "--format", "json")
    assert json.loads(as_json.output) == {"study": "target", "params": {"lr": 0.005}}


BAD_PARAMS = [
    pytest.param({"learning_rate": 0.1}, "Error: --params {path}: parameter 'learning_rate' is not in the "
                 "study's space (its parameters: freeze, lr, backbone_lr, optimizer, momentum, batch_size, epochs, "
                 "loss, patience)", id="unknown parameter"),
    pytest.param({"lr": 0.5}, "Error: --params {path}: lr = 0.5 is outside the study's space (0.001 .. 0.01 (log))",
                 id="out of range"),
    pytest.param({"freeze": "full"}, "Error: --params {path}: freeze = 'full' is outside the study's space "
                 "(['head', 'last_blocks'])", id="choice not offered"),
    pytest.param({"freeze": "head", "backbone_lr": 1e-5}, "Error: --params {path}: backbone_lr is inactive in "
                 "the study's space with these values", id="inactive parameter"),
    pytest.param({"patience": 3}, "Error: --params {path}: patience = 3 is outside the study's space (5)",
                 id="another value than the space fixes"),
]


@pytest.mark.parametrize("params, message", BAD_PARAMS)
def test_enqueue_refuses_params_the_space_cannot_take_and_queues_nothing(storage_url, tiny_space, tmp_path,
                                                                         params, message):
    library_study(storage_url, "target", tiny_space, n_trials=3, warm_start=False)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    result = invoke("enqueue", "--study", "target", "--storage", storage_url, "--params", str(path))
    assert result.exit_code == 1
    assert result.output == message.format(path=path) + "\n"
    assert load(storage_url, "target").get_trials() == []


def test_enqueue_refuses_a_study_whose_budget_is_spent(storage_url, tiny_space, tmp_path):
    study = library_study(storage_url, "full", tiny_space, n_trials=1, warm_start=False)
    add_finished_trial(study, 0.5)
    path = tmp_path / "params.yaml"
    path.write_text("lr: 0.002\n")
    result = invoke("enqueue", "--study", "full", "--storage", storage_url, "--params", str(path))
    assert result.exit_code == 1
    assert result.output == ("Error: study 'full' has no budget left for another trial (1 trial, 0 already "
                             "queued): raise it first with tuner extend\n")


# --- tuner delete -------------------------------------------------------------------------

def test_delete_asks_first_then_removes_the_study_and_its_artifacts(storage_url, tmp_path):
    space = tmp_path / "resume.yaml"
    space.write_text(resume_space(1))
    artifacts = tmp_path / "artifacts"
    ran = invoke("run", "--study", "d", "--space", str(space), "--data", "digits", "--image-size", "16",
                 "--weights", "none", "--n-trials", "1", "--storage", storage_url, "--artifacts", str(artifacts),
                 "--device", "cpu", "--quiet")
    assert ran.exit_code == 0, ran.output
    library_study(storage_url, "other", space, n_trials=1)
    assert list(artifacts.iterdir())  # the best weights

    refused = invoke("delete", "--study", "d", "--storage", storage_url, input="n\n")
    assert refused.exit_code == 1
    assert refused.output == f"Delete study d (1 trial) and its artifacts in {artifacts}? [y/N]: n\nAborted!\n"
    assert sorted(optuna.get_all_study_names(storage=storage_url)) == ["d", "other"]

    deleted = invoke("delete", "--study", "d", "--storage", storage_url, input="y\n")
    assert deleted.exit_code == 0, deleted.output
    assert deleted.output.endswith("deleted study d (1 trial, 1 artifact file)\n")
    assert optuna.get_all_study_names(storage=storage_url) == ["other"]
    assert list(artifacts.iterdir()) == []

    library_study(storage_url, "d", space, n_trials=1)
    assert invoke("delete", "--study", "d", "--storage", storage_url, "--yes").exit_code == 0


# --- tuner studies, and foreign studies in status ------------------------------------------

def test_studies_lists_every_study_and_a_foreign_one_breaks_nothing(storage_url, tiny_space):
    study = library_study(storage_url, "mine", tiny_space, n_trials=3, warm_start=False)
    add_finished_trial(study, 0.75)
    created = study.user_attrs["tuner_created"]
    foreign = optuna.create_study(study_name="foreign", storage=storage_url, directions=["minimize", "maximize"])
    foreign.enqueue_trial({})

    report = json.loads(invoke("studies", "--storage", storage_url, "--format", "json").output)
    assert report["storage"] == mask_url(storage_url)
    rows = {row["name"]: row for row in report["studies"]}
    assert rows["mine"] == {"name": "mine", "tuner": True, "metric": "val_accuracy", "n_trials": 3, "trials": 1,
                            "finished": 1,
                            "states": {"RUNNING": 0, "COMPLETE": 1, "PRUNED": 0, "FAIL": 0, "WAITING": 0},
                            "failed": 0, "handed_back": 0, "over_budget": 0, "retried": 0, "duplicate": 0,
                            "best": 0.75, "created": created}
    assert rows["foreign"]["tuner"] is False and rows["foreign"]["best"] is None
    assert rows["foreign"]["states"]["WAITING"] == 1
    table = invoke("studies", "--storage", storage_url)
    assert table.exit_code == 0
    cells = [line.split() for line in table.output.splitlines()[1:] if line.strip() and set(line.strip()) != {"─"}]
    assert ["mine", "1/3", "complete", "1", "val_accuracy", "0.7500", created] in cells
    assert any(row[:2] == ["foreign", "0"] and "(not tuner's)" in " ".join(row) for row in cells), cells

    status = invoke("status", "--storage", storage_url)
    assert status.exit_code == 0, status.output
    assert "study foreign: not created by tuner [waiting 1]" in status.output.splitlines()
    assert "study mine: 1/3 finished [complete 1]; best val_accuracy 0.7500 (trial 0)" in status.output.splitlines()


def add_worker_trial(study: optuna.Study, state: TrialState, **attrs) -> None:
    """A trial as a worker leaves it, with the user attrs (and retry system attrs) it writes."""
    system = attrs.pop("system_attrs", {})
    lr = {"lr": 5e-3}, {"lr": optuna.distributions.FloatDistribution(1e-3, 1e-2, log=True)}
    study.add_trial(optuna.trial.create_trial(state=state, params=lr[0], distributions=lr[1],
                                              user_attrs=attrs, system_attrs=system))


def test_studies_and_status_count_the_same_trials_the_same_way(tmp_path, tiny_space):
    """They disagreed: studies said `3/3 | fail 1, waiting 2` where status said `0/3 finished`."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = library_study(url, "s", tiny_space, n_trials=3, warm_start=False)
    add_worker_trial(study, TrialState.FAIL, handed_back=True, lineage=0)   # 0: handed back ...
    add_worker_trial(study, TrialState.WAITING, lineage=0, retry_of=0)       # 1: ... and its copy: one trial
    add_worker_trial(study, TrialState.WAITING)                                # 2: queued
    add_finished_trial(study, 0.5)                                             # 3
    add_worker_trial(study, TrialState.FAIL, over_budget=True)                # never a trial
    add_worker_trial(study, TrialState.FAIL, duplicate_of=1)                  # never a trial
    add_worker_trial(study, TrialState.FAIL)                                  # 6: really failed

    status = json.loads(invoke("status", "--storage", url, "--format", "json").output)["studies"][0]
    listed = json.loads(invoke("studies", "--storage", url, "--format", "json").output)["studies"][0]
    counts = ("trials", "finished", "states", "failed", "handed_back", "over_budget", "retried", "duplicate")
    assert {k: status[k] for k in counts} == {k: listed[k] for k in counts}
    assert (listed["trials"], listed["finished"], listed["failed"]) == (4, 1, 1)
    expected = "complete 1, fail 1, handed back 1, over budget 1, duplicate 1, waiting 2"
    status_text = invoke("status", "--storage", url).output
    assert f"study s: 1/3 finished [{expected}]; best val_accuracy 0.5000 (trial 3)" in status_text.splitlines()
    table = invoke("studies", "--storage", url).output  # the states cell may fold onto a second line
    words = " ".join(table.split())
    assert "s 1/3 complete 1, fail 1, handed back 1, over budget 1, duplicate 1," in words, table
    assert "waiting 2" in words and "fail 2" not in words and "3/3" not in words, table


UNKNOWN_STUDY = [
    pytest.param(["extend", "--n-trials", "3"], id="extend"),
    pytest.param(["stop"], id="stop"),
    pytest.param(["enqueue", "--params", "p.yaml"], id="enqueue"),
    pytest.param(["delete", "--yes"], id="delete"),
    pytest.param(["status"], id="status"),
]


@pytest.mark.parametrize("command", UNKNOWN_STUDY)
def test_an_unknown_study_is_one_clear_error(storage_url, tiny_space, tmp_path, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "p.yaml").write_text("lr: 0.002\n")
    library_study(storage_url, "mine", tiny_space)
    result = invoke(*command, "--study", "nope", "--storage", storage_url)
    assert result.exit_code == 1
    assert result.output == "Error: no study named 'nope' in this storage (studies: mine)\n"
    assert optuna.get_all_study_names(storage=storage_url) == ["mine"]


# Every command that reads or manages one study, and what it prints when --study is left out
# and the storage's only study is "mine" (None: only that it runs on "mine").
DEFAULT_STUDY = [
    pytest.param(["best"], "study mine: best val_accuracy = 0.7500 (trial 0)", id="best"),
    pytest.param(["export", "--format", "json"], '"study": "mine"', id="export"),
    pytest.param(["report", "--out", "report"], None, id="report"),
    pytest.param(["retrain", "--out", "model"], None, id="retrain"),
    pytest.param(["extend", "--n-trials", "5"], "study mine: budget 3 -> 5 trials", id="extend"),
    pytest.param(["stop"], "asked the workers of study mine to stop", id="stop"),
    pytest.param(["enqueue", "--params", "p.yaml"], "queued in study mine:", id="enqueue"),
    pytest.param(["status"], "study mine: 1/3 finished", id="status"),
]


@pytest.mark.parametrize("command, shown", DEFAULT_STUDY)
def test_the_storage_s_only_study_is_every_command_s_default(tmp_path, tiny_space, monkeypatch, command, shown):
    """`tuner best` needed --study where `tuner status` did not: one rule for all of them."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "p.yaml").write_text("lr: 0.002\n")
    url = f"sqlite:///{tmp_path / 'study.db'}"
    add_finished_trial(library_study(url, "mine", tiny_space, n_trials=3, warm_start=False), 0.75)
    if shown is not None:
        result = invoke(*command, "--storage", url)
        assert result.exit_code == 0, result.output
        assert shown in result.output
    library_study(url, "other", tiny_space, n_trials=3, warm_start=False)
    result = invoke(*command, "--storage", url)
    if command == ["status"]:  # status shows every study when it names none
        assert result.exit_code == 0 and "study other: 0/3 finished" in result.output, result.output
        return
    assert result.exit_code == 1, result.output
    assert result.output == "Error: this storage holds 2 studies: name one with --study (mine, other)\n"
    assert not (tmp_path / "report").exists() and not (tmp_path / "model").exists()


def test_a_command_on_an_empty_storage_says_there_is_no_study(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    optuna.storages.RDBStorage(url)  # the tables, no study
    result = invoke("best", "--storage", url)
    assert result.exit_code == 1
    assert result.output == "Error: this storage holds no study yet (create one with tuner run or tuner create)\n"


# --- status of running trials -----------------------------------------------------------------

@pytest.mark.parametrize("silent, stale", [pytest.param(5, False, id="reported 5 s ago"),
                                           pytest.param(500, True, id="silent for 500 s")])
def test_status_shows_progress_elapsed_time_and_flags_a_silent_trial(tmp_path, tiny_space, silent, stale):
    import time

    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = library_study(url, "live", tiny_space, n_trials=2, warm_start=False)  # grace period 120 s
    trial = study.ask()
    for key, value in {"epoch": 2, "epochs": 3, "epoch_at": time.time() - silent, "last_metric": 0.5}.items():
        trial.set_user_attr(key, value)

    report = json.loads(invoke("status", "--storage", url, "--format", "json").output)
    (row,) = report["studies"][0]["running"]
    assert (row["epoch"], row["epochs"], row["stale"]) == (2, 3, stale)
    assert silent <= row["silent_s"] < silent + 30 and 0 <= row["elapsed_s"] < 60
    table = invoke("status", "--storage", url).output
    line = next(line for line in table.splitlines() if line.split()[:1] == ["0"])
    assert " 2/3 " in line and line.rstrip().endswith("STALE?") == stale, table


def test_stop_counts_the_trials_running_when_it_asked_not_after(tmp_path, tiny_space):
    """A worker that sees the request at once hands its trial back before a later count could
    see it: here a SQLite trigger is that worker, failing every running trial as soon as the
    stop request is written. Counted after the request, the answer was 0 trials."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    create(url, "st", tiny_space, 2, tmp_path / "artifacts", "--no-warm-start")
    study = load(url, "st")
    study.ask()  # a trial a worker is running
    with sqlite3.connect(tmp_path / "study.db") as db:
        for event in ("INSERT", "UPDATE"):
            db.execute(f"CREATE TRIGGER hand_back_{event.lower()} AFTER {event} ON study_user_attributes "
                       "BEGIN UPDATE trials SET state = 'FAIL' WHERE state = 'RUNNING'; END")

    stopped = invoke("stop", "--study", "st", "--storage", url)

    assert stopped.exit_code == 0, stopped.output
    assert stopped.output == ("asked the workers of study st to stop (1 trial running); "
                              "`tuner worker --study st` resumes them later\n")
    assert [t.state for t in load(url, "st").get_trials()] == [TrialState.FAIL]  # the trigger did run
