"""Uniform (asymmetric round-to-nearest) tables and the exact uniform -> BCQ conversion.

All functions work on grouped weights ``xg [N, G, g]`` with an optional ``mask [G, g]`` marking the real entries of
a padded ragged last group (see ``memtool.compress.lut.to_groups``). A uniform group decodes as
``w = scale * (code - zero)`` with integer codes in ``[0, 2^q - 1]`` and an integer-valued ``zero``.
"""

from __future__ import annotations

import torch


def fit_uniform(xg: torch.Tensor, mask: torch.Tensor | None, bits: int, sym: bool = False) -> dict[str, torch.Tensor]:
    """Per-group scale and zero from the group's min/max (range widened to include 0, as GPTQ does)."""
    maxq = 2**bits - 1
    if mask is None:
        lo, hi = xg.amin(-1), xg.amax(-1)
    else:
        lo = xg.masked_fill(~mask, float("inf")).amin(-1)
        hi = xg.masked_fill(~mask, float("-inf")).amax(-1)
    lo, hi = lo.clamp(max=0), hi.clamp(min=0)
    if sym:
        amax = torch.maximum(-lo, hi)
        scale = 2 * amax / maxq
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        zero = torch.full_like(scale, float(2 ** (bits - 1)))
    else:
        scale = (hi - lo) / maxq
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        zero = torch.round(-lo / scale).clamp(0, maxq)
    return {"scale": scale, "zero": zero}


def uniform_lut(scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """``[N, G, 2^q]`` decode tables ``scale * (k - zero)``."""
    k = torch.arange(2**bits, dtype=scale.dtype, device=scale.device)
    return scale[..., None] * (k - zero[..., None])


def encode_uniform(xg: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """Round-to-nearest codes ``clamp(round(x / scale) + zero)`` as int64 ``[N, G, g]``."""
    q = torch.round(xg / scale[..., None]) + zero[..., None]
    return q.clamp(0, 2**bits - 1).long()


def uniform_to_bcq_params(scale: torch.Tensor, zero: torch.Tensor, bits: int) -> dict[str, torch.Tensor]:
    """Exact BCQ parameters of a uniform group (same codes).

    With code = sum_i bit_i 2^i (i = 0..q-1) and bit_i = (b_i + 1) / 2:
    scale * (code - zero) = sum_i (scale 2^(i-1)) b_i + scale ((2^q - 1)/2 - zero),
    so alpha_i = scale * 2^(i-1) (bit 0 -> scale/2) and offset = scale * ((2^q - 1)/2 - zero).
    """
    pw = torch.pow(2.0, torch.arange(bits, dtype=scale.dtype, device=scale.device) - 1)
    alpha = scale[..., None] * pw
    offset = scale * ((2**bits - 1) / 2 - zero)
    return {"alpha": alpha, "offset": offset}
