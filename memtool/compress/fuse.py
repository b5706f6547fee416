"""Horizontal fusion of the LUT linears that read the same input: q/k/v and gate/up in one launch each.

Why: every LUT-GEMM launch on a GPU pays a fixed cost of several µs (launch, the first bytes' latency, the tail;
``scripts/gpu_stream_probe.py``, ``scripts/gpu_timeline.py``) and, on Hopper, an activation prep; at decode (M=1) a
4096-wide projection streams its weight in a few µs, so most of its time is that fixed cost. The rows of a LUT
weight are independent (codes, scales and tables are per row), so the weights of projections that read the same
activations concatenate along the output dimension exactly: one kernel computes all of them, and each projection
returns its columns of the result.

How: :func:`fuse_lut_projections` finds, in every module, children named like one of :data:`GROUPS` that are all
:class:`~memtool.compress.modules.LutLinear` of the same format, registers one :class:`FusedLutLinear` on the parent
(``<first>_fused``, e.g. ``q_proj_fused``) and replaces each member by a :class:`LutSlice`. The first member called
with an input computes the fused product; the others called with the same tensor (same object, not modified in
place since) take their columns of it; the product is dropped once every member has taken its part. Inference only
(the weights are buffers); a fused model's state dict names the fused module, so save artifacts before fusing.
Measured (``scripts/gpu_fuse_bench.py``, docs/BENCHMARKS.md): the seven projections of a Llama-2-7B layer, 3-bit,
on an H100: 75 -> 57 µs at M=1, 86 -> 64 µs at M=16; on an H200 70 -> 52 and 82 -> 61 µs.
"""

from __future__ import annotations

import torch
from torch import nn

from memtool.compress.modules import LutLinear, _version

GROUPS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


class FusedLutLinear(nn.Module):
    """Several LUT linears with one input, as one :class:`LutLinear` whose rows are theirs in order (``sizes``)."""

    def __init__(self, members: list[LutLinear]):
        super().__init__()
        self.sizes = [m.out_features for m in members]
        self.offsets = [sum(self.sizes[:i]) for i in range(len(self.sizes))]
        self.linear = _concat(members)
        self._x = self._y = None  # the input of the pending product and the product
        self._version = self._left = 0  # the input's version then, the parts still to take

    def part(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Member i's output for input x (computes the fused product when x is not the pending one's input)."""
        ver = _version(x)
        if self._x is not x or self._version != ver:  # (_x is None once every member took its part)
            self._y = self.linear(x)
            self._x, self._version, self._left = x, ver, len(self.sizes)
        y = self._y[..., self.offsets[i]:self.offsets[i] + self.sizes[i]]
        self._left -= 1
        if self._left <= 0:  # every member has its part: hold no activations between calls
            self._x = self._y = None
        return y

    def extra_repr(self) -> str:
        return f"sizes={self.sizes}"


class LutSlice(nn.Module):
    """Member i of a :class:`FusedLutLinear` (held without registering it: its parent registers it once)."""

    def __init__(self, fused: FusedLutLinear, i: int):
        super().__init__()
        object.__setattr__(self, "fused", fused)
        self.index = i
        self.in_features = fused.linear.in_features
        self.out_features = fused.sizes[i]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fused.part(self.index, x)

    def extra_repr(self) -> str:
        return f"part {self.index} of {self.fused.sizes}, out_features={self.out_features}"


def _compatible(members: list[nn.Module]) -> bool:
    if not all(isinstance(m, LutLinear) for m in members):
        return False
    a = members[0]
    same = all((m.kind, m.bits, m.group_size, m.in_features) == (a.kind, a.bits, a.group_size, a.in_features)
               for m in members)  # fmt: skip
    if not same or len({m.bias is None for m in members}) != 1:
        return False
    devices = {t.device for m in members for t in m._buffers.values() if t is not None}
    if len(devices) != 1 or any(t.device.type == "meta" for m in members for t in m._buffers.values() if t is not None):
        return False
    tables = [m._buffers.get("table") for m in members]
    if a.kind == "table" and tables[0] is not None and tables[0].dim() == 1:  # one global table: must be the same
        return all(t is not None and t.dim() == 1 and torch.equal(t, tables[0]) for t in tables)
    return True


def _concat(members: list[LutLinear]) -> LutLinear:
    """One LutLinear with the members' rows in order (every tensor of the format is per row, except a global
    table, which the members share). Packed words are laid out in blocks of 64 rows (lut_layout), so they
    concatenate as they are when every member but the last has a multiple of 64 rows; otherwise the codes are
    unpacked and packed again (exact)."""
    from memtool.kernels import lut_layout
    from memtool.kernels.lut_types import LutWeight

    a = members[0]
    lw = [m.lut_weight() for m in members]
    sd = {}
    for name, t in lw[0].state_dict().items():
        if name == "table" and t.dim() == 1:
            sd[name] = t
        elif name == "qweight" and any(m.out_features % lut_layout.ROW_BLOCK for m in members[:-1]):
            sd[name] = lut_layout.pack_codes(torch.cat([w.to_codes() for w in lw], 0), a.bits)
        else:
            sd[name] = torch.cat([w.state_dict()[name] for w in lw], 0)
    n = sum(m.out_features for m in members)
    w = LutWeight.from_state_dict(sd, kind=a.kind, bits=a.bits, group_size=a.group_size, in_features=a.in_features,
                                  out_features=n)  # fmt: skip
    bias = None if a.bias is None else torch.cat([m.bias.detach() for m in members], 0)
    return LutLinear.from_lut_weight(w, bias)


def fuse_lut_projections(model: nn.Module, groups=GROUPS) -> list[str]:
    """Fuse every group of sibling LUT linears named in ``groups`` (see the module docstring); returns the names of
    the fused modules added. Groups whose members differ in format, input size, bias or device are left as they are."""
    added = []
    for pname, parent in list(model.named_modules()):
        for names in groups:
            members = [parent._modules.get(nm) for nm in names]
            if any(m is None for m in members) or not _compatible(members):
                continue
            fused = FusedLutLinear(members)
            attr = f"{names[0]}_fused"
            parent.add_module(attr, fused)
            for i, nm in enumerate(names):
                parent._modules[nm] = LutSlice(fused, i)
            added.append(f"{pname}.{attr}" if pname else attr)
    return added
