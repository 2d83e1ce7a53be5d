"""Several worker processes on one node: one (or N) per GPU, or N on a device, supervised and restarted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass

from tuner.errors import DeviceError, OptionError
from tuner.progress import PLAIN_ENV
from tuner.training import parse_device

# A child that keeps crashing is given up on after this many restarts.
MAX_RESTARTS = 5
# Exit codes of a child that stopped because it was told to (signal) or finished cleanly.
CLEAN_EXITS = (0, 130, 143, -signal.SIGINT, -signal.SIGTERM)


@dataclass(frozen=True)
class ChildSpec:
    label: str
    device: str
    env: tuple[tuple[str, str], ...] = ()


def visible_gpu_count() -> int:
    import torch

    return torch.cuda.device_count()


def parse_gpus(spec: str, count: int) -> list[int]:
    if count == 0:
        raise DeviceError(f"--gpus {spec}: no CUDA GPU is visible on this node (use --device cpu)")
    if spec.strip() == "all":
        return list(range(count))
    try:
        indices = [int(part) for part in spec.split(",") if part.strip()]
    except ValueError:
        raise DeviceError(f"--gpus must be 'all' or comma-separated GPU indices like 0,1,3, got {spec!r}") from None
    if not indices:
        raise DeviceError(f"--gpus must name at least one GPU, got {spec!r}")
    for index in indices:
        if not 0 <= index < count:
            raise DeviceError(f"--gpus names GPU {index}, but this node has {count} (0..{count - 1})")
    return indices


def cuda_device(device: str, count: int) -> tuple[str, int]:
    """The CUDA device that --trials-per-gpu shares without --gpus, and its index."""
    needs_cuda = ("--trials-per-gpu needs a CUDA device (--gpus or --device cuda[:N]), got --device "
                  f"{device}{' (no CUDA GPU here)' if device == 'auto' else ''}; on CPU use --processes N")
    if device == "auto":
        if count == 0:
            raise DeviceError(needs_cuda)
        return "cuda", 0
    parsed = parse_device(device, count)
    if parsed.type != "cuda":
        raise DeviceError(needs_cuda)
    return device, parsed.index or 0


def gpu_label(index: int, slot: int, per_gpu: int) -> str:
    # One process per GPU keeps the plain gpuI labels; several get gpuI.1, gpuI.2, ...
    return f"gpu{index}" if per_gpu == 1 else f"gpu{index}.{slot}"


def plan_processes(gpus: str | None, processes: int | None, device: str, gpu_count: int,
                   trials_per_gpu: int | None = None) -> list[ChildSpec]:
    """The children to start; `gpu_count` is visible_gpu_count(), a parameter so plans are testable."""
    if trials_per_gpu is not None and processes is not None:
        raise OptionError("--trials-per-gpu and --processes cannot be combined: --trials-per-gpu N runs N "
                          "processes per GPU, --processes N runs N processes on --device")
    per_gpu = trials_per_gpu or 1
    slots = range(1, per_gpu + 1)
    if gpus is not None:
        # Each child sees exactly one GPU, so inside it the device is plain cuda.
        return [ChildSpec(gpu_label(i, slot, per_gpu), "cuda", (("CUDA_VISIBLE_DEVICES", str(i)),))
                for i in parse_gpus(gpus, gpu_count) for slot in slots]
    if trials_per_gpu is not None:
        shared, index = cuda_device(device, gpu_count)
        return [ChildSpec(gpu_label(index, slot, per_gpu), shared) for slot in slots]
    return [ChildSpec(f"proc{i}", device) for i in range(processes or 1)]


def child_env(spec: ChildSpec, children: int, environ: Mapping[str, str], cpus: int) -> dict[str, str]:
    """A child's environment: the parent's, its own variables, and its share of the CPU cores.

    Every torch process starts one compute thread per core. N children on one node would
    run N times as many threads as cores, and their OpenMP threads, spinning while they
    wait for each other, make every step several times slower. An OMP_NUM_THREADS the
    user set is kept.
    """
    env = {**environ, **dict(spec.env)}
    if "CUDA_VISIBLE_DEVICES" in dict(spec.env):
        env["CUDA_VISIBLE_DEVICES"] = visible_entry(env["CUDA_VISIBLE_DEVICES"], environ.get("CUDA_VISIBLE_DEVICES"))
    env.setdefault("OMP_NUM_THREADS", str(max(1, cpus // children)))
    # Children share the supervisor's terminal: live displays would overwrite each other,
    # so each prints plain lines, every one labelled with its worker's name.
    env[PLAIN_ENV] = "1"
    return env


def visible_entry(index: str, parent: str | None) -> str:
    """What a child's CUDA_VISIBLE_DEVICES must say for the parent's GPU `index`.

    --gpus counts the GPUs this process sees. When the user already narrowed them
    (CUDA_VISIBLE_DEVICES=2,3), GPU 0 here is physical GPU 2: the child must get "2" (or
    the UUID listed there), not "0", which would put it on a GPU the user excluded.
    """
    if parent is None or not parent.strip():
        return index
    entries = [entry.strip() for entry in parent.split(",") if entry.strip()]
    return entries[int(index)] if int(index) < len(entries) else index


class Supervisor:
    """Starts the children, restarts one that crashes, and forwards SIGINT/SIGTERM to all."""

    def __init__(self, plan: list[ChildSpec], argv: list[str]) -> None:
        self.plan = plan
        self.argv = argv
        self.children: dict[str, subprocess.Popen] = {}
        self.restarts = {spec.label: 0 for spec in plan}
        self.stopping = False

    def start(self, spec: ChildSpec) -> None:
        env = child_env(spec, len(self.plan), os.environ, os.cpu_count() or 1)
        command = [sys.executable, "-m", "tuner", *self.argv, "--device", spec.device]
        self.children[spec.label] = subprocess.Popen(command, env=env)
        print(f"[supervisor] started {spec.label} (pid {self.children[spec.label].pid})", file=sys.stderr)

    def forward(self, signum: int, frame) -> None:
        if self.stopping:
            # Second signal: children exit at once too (their own second signal).
            for child in self.children.values():
                if child.poll() is None:
                    child.send_signal(signum)
            sys.exit(128 + signum)
        self.stopping = True
        for child in self.children.values():
            if child.poll() is None:
                child.send_signal(signum)

    def run(self) -> int:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self.forward)
        for spec in self.plan:
            self.start(spec)
        failed = False
        while self.children:
            time.sleep(0.5)
            for spec in self.plan:
                child = self.children.get(spec.label)
                if child is None or child.poll() is None:
                    continue
                del self.children[spec.label]
                failed |= self.handle_exit(spec, child.returncode)
        if self.stopping:
            return 130
        return 1 if failed else 0

    def handle_exit(self, spec: ChildSpec, code: int) -> bool:
        """True when the child is given up on."""
        if code in CLEAN_EXITS or self.stopping:
            return False
        if self.restarts[spec.label] >= MAX_RESTARTS:
            print(f"[supervisor] {spec.label} crashed {MAX_RESTARTS + 1} times; giving up on it", file=sys.stderr)
            return True
        self.restarts[spec.label] += 1
        print(f"[supervisor] {spec.label} exited with {code}; restarting "
              f"({self.restarts[spec.label]}/{MAX_RESTARTS})", file=sys.stderr)
        time.sleep(min(2 ** self.restarts[spec.label], 30) / 4)
        self.start(spec)
        return False


def supervise(plan: list[ChildSpec], argv: list[str]) -> int:
    return Supervisor(plan, argv).run()
