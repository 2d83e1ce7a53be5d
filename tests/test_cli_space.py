"""`tuner space` commands through click's CliRunner, with exact exit codes and messages."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from tuner.cli import cli


@pytest.fixture
def runner():
    return CliRunner()


def test_space_list_names_every_shipped_space(runner):
    result = runner.invoke(cli, ["space", "list"])
    assert result.exit_code == 0
    names = [line.split()[0] for line in result.output.splitlines()]
    assert names == ["default", "feature_extraction", "fine_tuning"]


def test_space_validate_ok(runner):
    result = runner.invoke(cli, ["space", "validate", "default", "search_spaces/fine_tuning.yaml"])
    assert result.exit_code == 0
    assert result.output.splitlines() == [
        "default.yaml: OK (26 parameters)",
        "fine_tuning.yaml: OK (24 parameters)",
    ]


def test_space_validate_reports_each_bad_file_and_exits_1(runner, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("params:\n  lr: {type: float, low: 0, high: 1.0e-3, log: true}\n")
    result = runner.invoke(cli, ["space", "validate", "default", str(bad), str(tmp_path / "none.yaml")])
    assert result.exit_code == 1
    assert result.stdout == "default.yaml: OK (26 parameters)\n"
    assert result.stderr.splitlines() == [
        "Error: bad.yaml: lr.low must be > 0 when log is true, got 0",
        f"Error: no search space file or shipped space named '{tmp_path / 'none.yaml'}' "
        "(shipped: default, feature_extraction, fine_tuning)",
    ]
    assert "Traceback" not in result.output


def test_space_show_json_is_the_optuna_distribution_json(runner):
    result = runner.invoke(cli, ["space", "show", "default", "--format", "json"])
    assert result.exit_code == 0
    shown = json.loads(result.stdout)
    assert shown["name"] == "default"
    assert shown["params"]["weight_decay"] == [
        {
            "distribution": {
                "name": "FloatDistribution",
                "attributes": {"low": 1e-6, "high": 1e-4, "log": True, "step": None},
            },
            "when": None,
        }
    ]
    lr = shown["params"]["lr"]
    assert [b["when"] for b in lr] == [{"freeze": ["head", "last_blocks"]}, {"freeze": ["full"]}]
    assert shown["params"]["patience"][0]["distribution"] == {
        "name": "CategoricalDistribution", "attributes": {"choices": [5]}
    }


def test_space_show_table_lists_branches(runner):
    result = runner.invoke(cli, ["space", "show", "search_spaces/default.yaml"])
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].startswith("default (default.yaml): Every row")
    assert any(line.split()[:4] == ["lr", "float", "1e-05", ".."] for line in lines)
    assert any(line.split()[:3] == ["nesterov", "categorical", "[false,"] for line in lines)


@pytest.mark.parametrize(
    "args,code,message",
    [
        (["space", "show", "nope"], 1,
         "Error: no search space file or shipped space named 'nope' (shipped: default, feature_extraction, fine_tuning)"),
        (["space", "show", "default", "--format", "xml"], 2,
         "Error: Invalid value for '--format': 'xml' is not one of 'table', 'json'."),
        (["space", "validate"], 2, "Error: Missing argument 'FILE|NAME...'."),
        (["space", "frobnicate"], 2, "Error: No such command 'frobnicate'."),
    ],
)
def test_space_user_errors_exit_nonzero_with_one_error_line(runner, args, code, message):
    result = runner.invoke(cli, args)
    assert result.exit_code == code
    assert result.stderr.splitlines()[-1] == message
    assert "Traceback" not in result.output


def test_broken_file_error_from_show(runner, tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("params:\n  opt: {type: categorical, choices: []}\n")
    result = runner.invoke(cli, ["space", "show", str(bad)])
    assert result.exit_code == 1
    assert result.stderr == "Error: broken.yaml: opt.choices must not be empty, got []\n"


def test_help_teaches_the_workflow(runner):
    result = runner.invoke(cli, ["--help"])
    assert result.exit_code == 0
    assert "tuner run --data DIR" in result.output


@pytest.mark.parametrize(
    "body,message",
    [
        ("params:\n  dropout: {type: float, low: 0.3, high: 0.5, prior: {centre: 0.6, spread: 0.1}}\n",
         "Error: p.yaml: dropout.prior.centre must lie in the range 0.3 .. 0.5, got 0.6"),
        ("params:\n  optimizer: {type: categorical, choices: [adam, sgd], prior: {weights: [0, 0]}}\n",
         "Error: p.yaml: optimizer.prior.weights must not all be 0, got [0, 0]"),
        ("params:\n  head_init: {type: categorical, choices: [probe, linear]}\n",
         "Error: p.yaml: head_init must be one of random, probe, got 'linear'"),
        ("params:\n  freeze: {type: categorical, choices: [head, gradually]}\n",
         "Error: p.yaml: freeze must be one of head, last_blocks, full, gradual, got 'gradually'"),
        ("params:\n  unfreeze_every: {type: int, low: -2, high: 0}\n",
         "Error: p.yaml: unfreeze_every must be > 0, got 0"),
        ("params:\n  unfreeze_every: {type: float, low: 1, high: 3}\n",
         "Error: p.yaml: unfreeze_every must be an integer, got 3.0"),
    ],
)
def test_space_validate_checks_priors_and_the_new_parameters(runner, tmp_path, body, message):
    path = tmp_path / "p.yaml"
    path.write_text(body)
    result = runner.invoke(cli, ["space", "validate", str(path)])
    assert (result.exit_code, result.stderr) == (1, message + "\n")


def test_space_validate_accepts_gradual_unfreezing_and_probing(runner, tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text(
        "params:\n"
        "  freeze: {type: categorical, choices: [head, gradual], prior: {weights: [1, 3]}}\n"
        "  unfreeze_every: {type: int, low: 1, high: 3, when: {freeze: gradual}, prior: {centre: 2, spread: 1}}\n"
        "  head_init: {type: categorical, choices: [probe, random], when: {freeze: gradual}}\n"
    )
    result = runner.invoke(cli, ["space", "validate", str(path)])
    assert (result.exit_code, result.stdout) == (0, "g.yaml: OK (3 parameters)\n")
    shown = runner.invoke(cli, ["space", "show", str(path)])
    assert any(line.split()[:2] == ["unfreeze_every", "int"] and line.rstrip().endswith("2 ± 1")
               for line in shown.stdout.splitlines())
