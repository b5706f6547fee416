"""Swap a model's RMSNorm modules for one-kernel ones (:mod:`memtool.kernels.rmsnorm`) for decoding on a GPU.

Only the classes known to compute ``weight * (x * rsqrt(mean(x^2) + eps)).to(x.dtype)`` are swapped
(:data:`SWAPPABLE`; Gemma's ``(1 + weight)`` norm, for one, is not). The new module keeps the old one's weight
(the same Parameter) and epsilon; :func:`restore_norms` puts the originals back.
"""

from __future__ import annotations

import torch
from torch import nn

from memtool.kernels.rmsnorm import rmsnorm

SWAPPABLE = ("LlamaRMSNorm", "MistralRMSNorm", "MixtralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm", "Phi3RMSNorm")


class FastRMSNorm(nn.Module):
    """An RMSNorm whose forward is one kernel launch on CUDA (the same arithmetic elsewhere)."""

    def __init__(self, weight: nn.Parameter, eps: float):
        super().__init__()
        self.weight = weight
        self.variance_epsilon = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rmsnorm(x, self.weight, self.variance_epsilon)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.variance_epsilon}"


def swap_norms(model: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    """Replace every :data:`SWAPPABLE` norm of ``model`` by a :class:`FastRMSNorm`; returns (parent, name, original)
    for each, which :func:`restore_norms` takes."""
    done = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child).__name__ in SWAPPABLE and isinstance(getattr(child, "weight", None), nn.Parameter):
                eps = getattr(child, "variance_epsilon", getattr(child, "eps", None))
                if eps is None or child.weight.dim() != 1:
                    continue
                setattr(parent, name, FastRMSNorm(child.weight, float(eps)))
                done.append((parent, name, child))
    return done


def restore_norms(swapped: list[tuple[nn.Module, str, nn.Module]]) -> None:
    """Undo :func:`swap_norms`."""
    for parent, name, child in swapped:
        setattr(parent, name, child)
