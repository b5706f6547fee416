"""CPU path for ``lut_matmul``: vectorized unpack + dequantize once per weight (cached), then a BLAS matmul.

The dequantized weight is cached on the :class:`LutWeight` (``w.cache``) in the compute dtype: fp32 for
fp32/fp16 activations (fp16 matmul is slow on CPUs), bf16 for bf16 activations. So generation on a CPU pays
the unpack once per layer and then runs at dense speed; the packed tensors stay the stored form.
Set ``MEMTOOL_CPU_CACHE=0`` to dequantize group-chunk by chunk at every call instead (no extra memory,
slower). The fp32 result equals the reference exactly (same dequantization, same fp32 matmul).
"""

from __future__ import annotations

import os

import torch

from memtool.kernels.lut_layout import ROW_BLOCK
from memtool.kernels.lut_types import LutWeight

CHUNK_ROWS = 2048  # rounded to whole row blocks of the tile layout: a slice must start on a block


def _chunk() -> int:
    return max(ROW_BLOCK, CHUNK_ROWS // ROW_BLOCK * ROW_BLOCK)


def _compute_dtype(x_dtype: torch.dtype) -> torch.dtype:
    return torch.bfloat16 if x_dtype == torch.bfloat16 else torch.float32


def dequantized(w: LutWeight, dtype: torch.dtype) -> torch.Tensor:
    """The cached dequantized weight [N, K] in ``dtype`` (computed in fp32, row chunk by row chunk)."""
    key = ("cpu_dense", dtype)
    t = w.cache.get(key)
    if t is None:
        t = torch.empty(w.out_features, w.in_features, dtype=dtype)
        c = _chunk()
        for r0 in range(0, w.out_features, c):
            t[r0 : r0 + c] = _rows(w, r0, r0 + c).to(dtype)
        w.cache[key] = t
    return t


def _rows(w: LutWeight, r0: int, r1: int) -> torch.Tensor:
    """Dequantize output rows [r0, r1) in fp32 without touching the others."""
    sub = LutWeight(
        w.kind,
        w.bits,
        w.group_size,
        w.in_features,
        min(r1, w.out_features) - r0,
        w.qweight[r0:r1],
        *(None if t is None else t[r0:r1] for t in (w.scales, w.biases, w.alphas, w.offsets)),
        table=None if w.table is None else (w.table if w.table.dim() == 1 else w.table[r0:r1]),
    )
    return sub.dequantize(torch.float32)


def lut_matmul_cpu(x: torch.Tensor, w: LutWeight) -> torch.Tensor:
    cd = _compute_dtype(x.dtype)
    xc = x.to(cd)
    if os.environ.get("MEMTOOL_CPU_CACHE", "1") != "0":
        return torch.nn.functional.linear(xc, dequantized(w, cd)).to(x.dtype)
    out = torch.empty(*x.shape[:-1], w.out_features, dtype=cd)
    c = _chunk()
    for r0 in range(0, w.out_features, c):
        out[..., r0 : r0 + c] = torch.nn.functional.linear(xc, _rows(w, r0, r0 + c).to(cd))
    return out.to(x.dtype)
