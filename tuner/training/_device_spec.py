"""What an explicit --device names (cpu, cuda, cuda:N, mps), checked against this node's GPU count without torch."""

from __future__ import annotations

import re
from dataclasses import dataclass

from tuner.errors import DeviceError

# torch.device's own grammar (a type, then an optional index without leading zeros),
# narrowed to the device types tuner trains on.
DEVICE_PATTERN = re.compile(r"(cpu|cuda|mps)(?::(0|[1-9][0-9]*))?")
# torch keeps a device index in 8 bits: a bigger one would wrap around to a negative index.
MAX_INDEX = 127


@dataclass(frozen=True)
class DeviceSpec:
    """A parsed device string: torch.device(type, index) names the same device."""

    type: str
    index: int | None = None


def parse_device(spec: str, cuda_count: int) -> DeviceSpec:
    """An explicit --device (not auto): a known type, and a CUDA index among `cuda_count` GPUs.

    Torch-free, so the supervisor can check a device before its children import torch.
    """
    match = DEVICE_PATTERN.fullmatch(spec)
    if match is None or (match[2] is not None and int(match[2]) > MAX_INDEX):
        raise DeviceError(f"--device must be auto, cpu, cuda, cuda:N or mps, got {spec!r}")
    device = DeviceSpec(match[1], None if match[2] is None else int(match[2]))
    if device.type == "cuda":
        if cuda_count == 0:
            raise DeviceError(f"--device {spec}: no CUDA GPU is available here (use --device cpu)")
        if device.index is not None and device.index >= cuda_count:
            raise DeviceError(f"--device {spec}: only {cuda_count} CUDA GPU(s) here (cuda:0..cuda:{cuda_count - 1})")
    return device
