"""NormalFloat codebooks (one global table per bit width) with a per-group absmax scale: w = scale * table[code].

Construction of the q-bit table (2^q sorted entries, exactly one 0, ends at -1 and +1):
- P = 2^(q-1) positive levels at the standard-normal quantiles of probabilities evenly spaced from just above 0.5
  up to p_top = 1 - 1/2^(q+1) (so the top level represents the tail mass of about one part in 2^(q+1)):
  p_j = 0.5 + (p_top - 0.5) * j / P, j = 1..P;
- P - 1 negative levels built the same way on the lower half (p_j = 0.5 - (p_top - 0.5) * j / (P - 1));
- the value 0;
- each side is divided by its own largest magnitude, so the group's absmax element maps exactly onto -1 or +1.
The positive side gets the extra level (the 2^q entries cannot be symmetric around an exact zero).
"""

from __future__ import annotations

import torch


def nf_table(bits: int, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """The sorted ``[2^q]`` NormalFloat table for ``bits`` (2, 3, 4 or 8)."""
    P = 2 ** (bits - 1)
    p_top = 1.0 - 1.0 / 2 ** (bits + 1)
    jp = torch.arange(1, P + 1, dtype=torch.float64)
    pos = torch.special.ndtri(0.5 + (p_top - 0.5) * jp / P)
    pos = pos / pos.max()
    if P > 1:
        jn = torch.arange(1, P, dtype=torch.float64)
        neg = torch.special.ndtri(0.5 - (p_top - 0.5) * jn / (P - 1))
        neg = neg / neg.abs().max()
    else:  # not reached for bits >= 2
        neg = torch.empty(0, dtype=torch.float64)
    table = torch.cat([neg, torch.zeros(1, dtype=torch.float64), pos]).sort().values
    return table.to(dtype=dtype, device=device)


def fit_nf(xg: torch.Tensor, mask: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """Per-group absmax scale ``[N, G]`` (1 for an all-zero group)."""
    a = xg.abs() if mask is None else xg.abs().masked_fill(~mask, 0)
    scale = a.amax(-1)
    return {"scale": torch.where(scale > 0, scale, torch.ones_like(scale))}


def encode_nf(xg: torch.Tensor, scale: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Nearest table entry of ``x / scale`` (table sorted ascending), int64 ``[N, G, g]``."""
    t = table.to(xg.dtype)
    mids = (t[1:] + t[:-1]) / 2
    return torch.bucketize(xg / scale[..., None], mids)
