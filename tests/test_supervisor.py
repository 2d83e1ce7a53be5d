"""Process plans of `tuner worker --gpus/--processes/--trials-per-gpu`, and their errors through the CLI.

plan_processes takes the GPU count as a parameter, so plans for GPU nodes are checked on this
GPU-less one; the CLI itself is checked against what this node really has (no GPU).
"""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from tuner.cli import cli
from tuner.cli._study_commands import worker_argv
from tuner.errors import DeviceError, OptionError
from tuner.service._supervisor import ChildSpec, child_env, plan_processes


def gpu(index: int) -> tuple[tuple[str, str], ...]:
    return (("CUDA_VISIBLE_DEVICES", str(index)),)


PLANS = [
    pytest.param("0,1", None, "auto", 2, 2,
                 [ChildSpec("gpu0.1", "cuda", gpu(0)), ChildSpec("gpu0.2", "cuda", gpu(0)),
                  ChildSpec("gpu1.1", "cuda", gpu(1)), ChildSpec("gpu1.2", "cuda", gpu(1))],
                 id="gpus 0,1 x2"),
    pytest.param("all", None, "auto", 3, 1,
                 [ChildSpec("gpu0", "cuda", gpu(0)), ChildSpec("gpu1", "cuda", gpu(1)), ChildSpec("gpu2", "cuda", gpu(2))],
                 id="gpus all x1 keeps plain labels"),
    pytest.param("1", None, "cpu", 2, 3,
                 [ChildSpec(f"gpu1.{n}", "cuda", gpu(1)) for n in (1, 2, 3)],
                 id="gpus 1 x3 ignores --device"),
    pytest.param("all", None, "auto", 2, None,
                 [ChildSpec("gpu0", "cuda", gpu(0)), ChildSpec("gpu1", "cuda", gpu(1))],
                 id="gpus all, one each"),
    pytest.param(None, None, "cuda:1", 2, 2, [ChildSpec("gpu1.1", "cuda:1"), ChildSpec("gpu1.2", "cuda:1")],
                 id="device cuda:1 x2"),
    pytest.param(None, None, "cuda", 1, 3, [ChildSpec(f"gpu0.{n}", "cuda") for n in (1, 2, 3)],
                 id="device cuda x3"),
    pytest.param(None, None, "auto", 1, 2, [ChildSpec("gpu0.1", "cuda"), ChildSpec("gpu0.2", "cuda")],
                 id="device auto with a GPU x2"),
    pytest.param(None, 2, "cpu", 0, None, [ChildSpec("proc0", "cpu"), ChildSpec("proc1", "cpu")],
                 id="processes 2 on cpu"),
]


@pytest.mark.parametrize("gpus, processes, device, count, per_gpu, expected", PLANS)
def test_plan(gpus, processes, device, count, per_gpu, expected):
    assert plan_processes(gpus, processes, device, count, per_gpu) == expected


NEEDS_CUDA = "--trials-per-gpu needs a CUDA device (--gpus or --device cuda[:N]), got --device {}; on CPU use --processes N"
CONFLICT = ("--trials-per-gpu and --processes cannot be combined: --trials-per-gpu N runs N processes per GPU, "
            "--processes N runs N processes on --device")

PLAN_ERRORS = [
    pytest.param(None, None, "cpu", 2, 2, DeviceError, NEEDS_CUDA.format("cpu"), id="cpu"),
    pytest.param(None, None, "mps", 2, 2, DeviceError, NEEDS_CUDA.format("mps"), id="mps"),
    pytest.param(None, None, "auto", 0, 2, DeviceError, NEEDS_CUDA.format("auto (no CUDA GPU here)"),
                 id="auto without a GPU"),
    pytest.param(None, None, "cuda:2", 2, 2, DeviceError,
                 "--device cuda:2: only 2 CUDA GPU(s) here (cuda:0..cuda:1)", id="cuda:2 of 2"),
    pytest.param(None, None, "cuda", 0, 2, DeviceError,
                 "--device cuda: no CUDA GPU is available here (use --device cpu)", id="cuda without a GPU"),
    pytest.param(None, None, "tpu", 2, 2, DeviceError,
                 "--device must be auto, cpu, cuda, cuda:N or mps, got 'tpu'", id="unknown device"),
    pytest.param("all", None, "auto", 0, 2, DeviceError,
                 "--gpus all: no CUDA GPU is visible on this node (use --device cpu)", id="gpus all without a GPU"),
    pytest.param("0,2", None, "auto", 2, 2, DeviceError,
                 "--gpus names GPU 2, but this node has 2 (0..1)", id="gpus naming an absent GPU"),
    pytest.param(None, 2, "cuda", 2, 2, OptionError, CONFLICT, id="with --processes"),
]


@pytest.mark.parametrize("gpus, processes, device, count, per_gpu, error, message", PLAN_ERRORS)
def test_plan_errors(gpus, processes, device, count, per_gpu, error, message):
    with pytest.raises(error) as raised:
        plan_processes(gpus, processes, device, count, per_gpu)
    assert str(raised.value) == message


@pytest.mark.parametrize("compile_model, memory, tail", [
    (True, None, ["--compile", "--quiet"]),
    (False, None, ["--quiet"]),
    (False, 0.5, ["--memory-limit", "0.5", "--quiet"]),
])
def test_children_get_the_machine_local_flags(compile_model, memory, tail):
    params = {"study": "s", "num_workers": 2, "quiet": True, "compile_model": compile_model,
              "memory_limit_gib": memory, "gpus": "all", "trials_per_gpu": 2, "processes": None, "device": "auto"}
    assert worker_argv(params) == ["worker", "--study", "s", "--num-workers", "2", *tail]


@pytest.fixture(scope="module")
def study_url(tmp_path_factory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('supervisor') / 'study.db'}"
    result = CliRunner().invoke(cli, ["create", "--study", "s", "--storage", url, "--data", "digits",
                                      "--weights", "none", "--image-size", "16"])
    assert result.exit_code == 0, result.output
    return url


CLI_ERRORS = [
    pytest.param(["--device", "cpu", "--trials-per-gpu", "2"], "Error: " + NEEDS_CUDA.format("cpu"), id="cpu"),
    pytest.param(["--trials-per-gpu", "2"], "Error: " + NEEDS_CUDA.format("auto (no CUDA GPU here)"),
                 id="auto without a GPU"),
    pytest.param(["--gpus", "all", "--trials-per-gpu", "2"],
                 "Error: --gpus all: no CUDA GPU is visible on this node (use --device cpu)", id="gpus all"),
    pytest.param(["--device", "cuda", "--processes", "2", "--trials-per-gpu", "2"], "Error: " + CONFLICT,
                 id="with --processes"),
]


@pytest.mark.parametrize("options, message", CLI_ERRORS)
def test_worker_refuses_trials_per_gpu_without_a_gpu(study_url, options, message):
    if torch.cuda.is_available():
        pytest.skip("this check is for a node without GPUs")
    result = CliRunner().invoke(cli, ["worker", "--study", "s", "--storage", study_url, *options])
    assert result.exit_code == 1, result.output
    assert result.output == message + "\n"


def test_worker_help_explains_trials_per_gpu():
    result = CliRunner().invoke(cli, ["worker", "--help"])
    assert result.exit_code == 0
    assert "--trials-per-gpu N" in result.output and "per GPU" in result.output


@pytest.mark.parametrize(("parent", "index", "child"), [
    (None, 1, "1"),
    ("2,3", 0, "2"),
    ("2, 3", 1, "3"),
    ("GPU-8f2a,GPU-11c0", 1, "GPU-11c0"),  # UUIDs as nvidia-smi -L lists them
])
def test_a_child_gets_the_gpu_the_parent_means(parent, index, child):
    environ = {} if parent is None else {"CUDA_VISIBLE_DEVICES": parent}
    env = child_env(ChildSpec(f"gpu{index}", "cuda", gpu(index)), 1, environ, 4)
    assert env["CUDA_VISIBLE_DEVICES"] == child


@pytest.mark.parametrize(
    ("children", "cpus", "environ", "threads"),
    [(2, 16, {}, "8"), (4, 2, {}, "1"), (3, 16, {}, "5"), (1, 2, {}, "2"), (4, 16, {"OMP_NUM_THREADS": "3"}, "3")],
    ids=["2 of 16", "more children than cores", "rounds down", "alone", "user's setting kept"],
)
def test_children_share_the_cores(children, cpus, environ, threads):
    spec = ChildSpec("gpu0.1", "cuda", gpu(0))
    env = child_env(spec, children, {"PATH": "/bin", **environ}, cpus)
    assert env == {"PATH": "/bin", "CUDA_VISIBLE_DEVICES": "0", "OMP_NUM_THREADS": threads,
                   "TUNER_PLAIN_PROGRESS": "1"}  # one terminal, several children: plain lines, no live display

