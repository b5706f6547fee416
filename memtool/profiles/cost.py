"""A small roofline cost model for GEMV/GEMM and host<->device transfers, fed by a :class:`Profile`.

Shape convention: a linear layer with weight ``(N, K)`` (N = out features, K = in features) applied to
activations ``(M, K)``; ``y = x @ W.T`` is ``(M, N)``; FLOPs = 2*M*N*K.

Bytes moved (each read or written once, the ideal for a fused kernel):
    weights  N*K*weight_bits/8
  + scales   (N*K/group_size) * (scale_bits + zero_bits)/8     (only when group_size is given)
  + input    M*K*act_bytes
  + output   M*N*out_bytes                                       (out_bytes defaults to act_bytes)

t_mem = bytes / bandwidth, t_compute = flops / peak, t_roofline = max(t_mem, t_compute). Times in seconds; a
term is None when the profile lacks the number it needs.
"""

from __future__ import annotations

from typing import Any

from memtool.profiles.profile import Profile


def _profile(profile: Profile | None) -> Profile:
    if profile is not None:
        return profile
    from memtool.profiles.store import current_profile

    return current_profile()


def gemm_bytes(
    m: int,
    n: int,
    k: int,
    weight_bits: float = 16,
    group_size: int | None = None,
    act_bytes: float = 2,
    *,
    scale_bits: float = 16,
    zero_bits: float = 0,
    out_bytes: float | None = None,
) -> float:
    """Ideal bytes moved by ``(M, K) @ (N, K).T`` with quantized weights (see module docstring)."""
    if min(m, n, k) <= 0:
        raise ValueError(f"gemm dimensions must be positive, got m={m} n={n} k={k}")
    out_bytes = act_bytes if out_bytes is None else out_bytes
    b = n * k * weight_bits / 8
    if group_size:
        b += (n * k / group_size) * (scale_bits + zero_bits) / 8
    return b + m * k * act_bytes + m * n * out_bytes


def roofline_time(nbytes: float, flops: float, profile: Profile | None = None) -> dict[str, float | None]:
    p = _profile(profile)
    t_mem = nbytes / (p.mem_bw_gbs * 1e9) if p.mem_bw_gbs else None
    t_compute = flops / (p.peak_tflops * 1e12) if p.peak_tflops else None
    known = [t for t in (t_mem, t_compute) if t is not None]
    # with only one of the two known, the roofline is a lower bound from that one
    return {"t_mem": t_mem, "t_compute": t_compute, "t_roofline": max(known) if known else None}


def gemm_time(
    m: int,
    n: int,
    k: int,
    weight_bits: float = 16,
    group_size: int | None = None,
    act_bytes: float = 2,
    profile: Profile | None = None,
    *,
    scale_bits: float = 16,
    zero_bits: float = 0,
    out_bytes: float | None = None,
) -> dict[str, Any]:
    """Roofline estimate for one GEMM/GEMV: ``{bytes, flops, intensity, t_mem, t_compute, t_roofline, bound}``."""
    nbytes = gemm_bytes(m, n, k, weight_bits, group_size, act_bytes, scale_bits=scale_bits, zero_bits=zero_bits,
                        out_bytes=out_bytes)
    flops = 2.0 * m * n * k
    r = roofline_time(nbytes, flops, profile)
    bound = None
    if r["t_mem"] is not None and r["t_compute"] is not None:
        bound = "memory" if r["t_mem"] >= r["t_compute"] else "compute"
    return {"bytes": nbytes, "flops": flops, "intensity": flops / nbytes, **r, "bound": bound}


def transfer_time(nbytes: float, profile: Profile | None = None, pinned: bool = True, direction: str = "h2d") -> float | None:
    """Seconds to move ``nbytes`` between host and device (``direction`` "h2d", "d2h" or "both" = each way at once).

    Pageable memory uses the measured pageable bandwidth; without one it is estimated at 1/4 of pinned (pageable
    copies are staged through a pinned bounce buffer and block the host).
    """
    p = _profile(profile)
    if direction not in ("h2d", "d2h", "both"):
        raise ValueError(f"direction must be h2d, d2h or both, not {direction!r}")
    if direction == "both":
        bw = p.bidir_gbs / 2 if p.bidir_gbs else None  # per direction while both run
    else:
        bw = p.h2d_gbs if direction == "h2d" else p.d2h_gbs
    if not pinned and direction != "both":
        measured = p.h2d_pageable_gbs if direction == "h2d" else p.d2h_pageable_gbs
        bw = measured if measured else (bw / 4 if bw else None)
    elif not pinned and bw:
        bw = bw / 4
    return nbytes / (bw * 1e9) if bw else None


def roofline_pct(measured_s: float, nbytes: float, flops: float, profile: Profile | None = None) -> float | None:
    """100 * roofline time / measured time (100 = at the roofline), or None when the profile has no numbers."""
    if measured_s is None or measured_s <= 0:
        return None
    t = roofline_time(nbytes, flops, profile)["t_roofline"]
    return 100.0 * t / measured_s if t is not None else None
