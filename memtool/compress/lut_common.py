"""Grouping helpers shared by the LUT table builders: ragged group views and nearest-table-entry search."""

from __future__ import annotations

import math

import torch


def n_groups(K: int, group_size: int) -> int:
    """Groups per row: ceil(K / g); a group size of -1 (per-channel) means one group of K."""
    return 1 if group_size == -1 else math.ceil(K / group_size)


def to_groups(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``[N, K] -> ([N, G, g], mask [G, g] or None)``; the last group is zero-padded when g does not divide K."""
    N, K = w.shape
    g = K if group_size == -1 else group_size
    G = math.ceil(K / g)
    pad = G * g - K
    if pad == 0:
        return w.reshape(N, G, g), None
    wp = torch.nn.functional.pad(w, (0, pad))
    mask = (torch.arange(G * g, device=w.device) < K).reshape(G, g)
    return wp.reshape(N, G, g), mask


def from_groups(xg: torch.Tensor, K: int) -> torch.Tensor:
    """Inverse of ``to_groups``: ``[N, G, g] -> [N, K]`` (drops the padding)."""
    N = xg.shape[0]
    return xg.reshape(N, -1)[:, :K]


def sort_lut(lut: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``lut [..., L]`` -> (sorted values, their codes, midpoints [..., L-1]) for repeated nearest searches."""
    vals, order = lut.sort(dim=-1)
    return vals, order, ((vals[..., 1:] + vals[..., :-1]) / 2).contiguous()


def nearest_sorted(x: torch.Tensor, vals: torch.Tensor, order: torch.Tensor, mids: torch.Tensor):
    """Nearest entries for ``x [..., g]`` against tables prepared by ``sort_lut``: (codes int64, values)."""
    L = vals.shape[-1]
    lead = vals.shape[:-1]
    m2 = mids.reshape(-1, L - 1)
    pos = torch.searchsorted(m2, x.reshape(m2.shape[0], -1).contiguous().to(m2.dtype))
    codes = order.reshape(-1, L).gather(1, pos).reshape(*lead, -1)
    return codes, vals.reshape(-1, L).gather(1, pos).reshape(*lead, -1)


def nearest_codes(xg: torch.Tensor, lut: torch.Tensor) -> torch.Tensor:
    """Index of the nearest entry of each group's table: ``xg [..., g]``, ``lut [..., L]`` -> int64 ``[..., g]``.

    The tables need not be sorted; they are sorted here and searched with ``searchsorted`` (no [.., g, L] tensor).
    """
    return nearest_sorted(xg, *sort_lut(lut))[0]
