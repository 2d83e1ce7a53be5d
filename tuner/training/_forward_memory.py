"""How much memory one image's forward pass keeps at an input size, found on the meta device without allocating."""

from __future__ import annotations

from itertools import chain
from typing import Any

import torch
from torch.func import functional_call

# float32 input and activations: what a trial's forward keeps for the backward pass.
INPUT_BYTES_PER_VALUE = 4


def forward_bytes(network: torch.nn.Module, size: int) -> int:
    """Bytes of one float32 S x S image and of every leaf module's output for it (kept for the
    backward pass when training); the input alone when the model cannot run on the meta device."""
    return INPUT_BYTES_PER_VALUE * 3 * size**2 + (activation_bytes(network, size) or 0)


def activation_bytes(network: torch.nn.Module, size: int) -> int | None:
    """The leaf modules' outputs for one image at `size` px, or None when the forward fails there
    (too small an input, an operation the meta device lacks)."""
    total = 0

    def count(module: torch.nn.Module, inputs: Any, output: Any) -> None:
        nonlocal total
        total += sum(t.numel() * t.element_size() for t in _tensors(output))

    leaves = [module for module in network.modules() if next(module.children(), None) is None]
    handles = [module.register_forward_hook(count) for module in leaves]
    # Meta tensors carry shapes and no data: a forward at 100000 px costs nothing here.
    state = {name: torch.empty_like(tensor, device="meta")
             for name, tensor in chain(network.named_parameters(), network.named_buffers())}
    try:
        with torch.no_grad():
            functional_call(network, state, (torch.empty(1, 3, size, size, device="meta"),))
    except Exception:  # noqa: BLE001 - any failure means no estimate; the real dry run decides
        return None
    finally:
        for handle in handles:
            handle.remove()
    return total


def _tensors(output: Any) -> list[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, (list, tuple)):
        return [t for item in output for t in _tensors(item)]
    if isinstance(output, dict):
        return [t for item in output.values() for t in _tensors(item)]
    return []
