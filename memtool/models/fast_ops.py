"""A decoder's small ops as one kernel each (:mod:`memtool.kernels.decode_ops`), for decoding on a GPU.

At batch 1 a Llama layer's RMSNorm is ~7 kernel launches and its rotary embedding ~10, each a few µs: 65 norms and 32
rotary embeddings a token on a 7B model. :func:`use_fast_ops` swaps the norms for :class:`FastRMSNorm` (the same
Parameter and epsilon) and points the attention modules' ``apply_rotary_pos_emb`` at a wrapper that calls
:func:`~memtool.kernels.decode_ops.rope`; the returned handle's ``restore()`` undoes both. Only the classes and
modules known to compute exactly what the kernels compute are touched (:data:`SWAPPABLE`, :data:`ROTARY_MODULES`;
Gemma's ``(1 + weight)`` norm, for one, is not), and anything else (other shapes, the CPU) runs the original code.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

import torch
from torch import nn

from memtool.kernels.decode_ops import runs_triton, rmsnorm, rope

SWAPPABLE = ("LlamaRMSNorm", "MistralRMSNorm", "MixtralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm", "Phi3RMSNorm")
ROTARY_MODULES = ("llama", "mistral", "mixtral", "qwen2", "qwen3")  # transformers.models.<name>.modeling_<name>


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


def _rotary_for(original):
    """``apply_rotary_pos_emb`` through :func:`rope` where it applies (q, k [B, H, S, D], cos / sin [B, S, D],
    unsqueeze_dim 1), else ``original``."""

    def fast_rotary(q, k, cos, sin, unsqueeze_dim=1, *args, **kwargs):
        if args or kwargs or unsqueeze_dim != 1 or q.dim() != 4 or k.dim() != 4 or cos.dim() != 3 or not runs_triton(q):
            return original(q, k, cos, sin, unsqueeze_dim, *args, **kwargs)
        return rope(q, cos, sin), rope(k, cos, sin)

    fast_rotary.original = original
    return fast_rotary


@dataclass
class FastOps:
    """What :func:`use_fast_ops` changed: the norms swapped and the modules whose rotary function was replaced."""

    norms: list = field(default_factory=list)  # (parent, name, original module)
    rotary: list = field(default_factory=list)  # (python module, original function)

    def restore(self) -> None:
        for parent, name, child in self.norms:
            setattr(parent, name, child)
        for mod, fn in self.rotary:
            mod.apply_rotary_pos_emb = fn
        self.norms, self.rotary = [], []


def use_fast_ops(model: nn.Module, norms: bool = True, rotary: bool = True) -> FastOps:
    """Swap ``model``'s norms (:data:`SWAPPABLE`) for :class:`FastRMSNorm` and, for the transformers modules of its
    attention classes (:data:`ROTARY_MODULES`), ``apply_rotary_pos_emb`` for the one-kernel version (a module-level
    function: every model of that family in the process uses it until ``restore()``)."""
    ops = FastOps()
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if norms and type(child).__name__ in SWAPPABLE and isinstance(getattr(child, "weight", None), nn.Parameter):
                eps = getattr(child, "variance_epsilon", getattr(child, "eps", None))
                if eps is None or child.weight.dim() != 1:
                    continue
                setattr(parent, name, FastRMSNorm(child.weight, float(eps)))
                ops.norms.append((parent, name, child))
    if rotary:
        names = {type(m).__module__ for m in model.modules()}
        for fam in ROTARY_MODULES:
            modname = f"transformers.models.{fam}.modeling_{fam}"
            if modname not in names:
                continue
            mod = importlib.import_module(modname)
            fn = getattr(mod, "apply_rotary_pos_emb", None)
            if fn is None or hasattr(fn, "original"):
                continue
            mod.apply_rotary_pos_emb = _rotary_for(fn)
            ops.rotary.append((mod, fn))
    return ops
