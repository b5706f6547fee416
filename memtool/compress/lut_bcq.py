"""Binary-coding quantization (BCQ, as in LUT-GEMM): w = offset + sum_i alpha_i * b_i, b_i in {-1, +1}.

Code bit i (i = 0..q-1) stores (b_i + 1) / 2. ``fit_bcq`` fits alphas and offsets of every group at once:
1. greedy start: offset = group mean; for each plane from the top bit down, b = sign(r), alpha = mean |r|,
   r -= alpha * b;
2. alternating refinement: the alphas and the offset by least squares given the codes (a (q+1)x(q+1) normal
   system per group, solved batched), then the codes by nearest of the 2^q candidate values;
refinement stops early once no code changes. A second run starts from the uniform (min/max) grid converted exactly
to BCQ; each group keeps the lowest-error of the two runs and of that grid itself, so it never ends worse than RTN.
"""

from __future__ import annotations

import torch

from memtool.compress.lut_common import nearest_codes
from memtool.compress.lut_uniform import encode_uniform, fit_uniform, uniform_to_bcq_params


def bcq_signs(bits: int, dtype, device) -> torch.Tensor:
    """``[2^q, q]`` matrix of b_i = 2*bit_i - 1 for every code."""
    k = torch.arange(2**bits, device=device)
    bit = (k[:, None] >> torch.arange(bits, device=device)) & 1
    return (2 * bit - 1).to(dtype)


def bcq_lut(alpha: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """``alpha [N, G, q]``, ``offset [N, G]`` -> ``[N, G, 2^q]`` tables."""
    S = bcq_signs(alpha.shape[-1], alpha.dtype, alpha.device)
    return offset[..., None] + alpha @ S.T


def _sq_err(xg, m, lut, codes):
    d = xg - lut.gather(-1, codes)
    return (d * d * m).sum(-1)


def _refine(xg, m, codes, alpha, offset, bits, iters):
    """Alternate least-squares (alpha, offset) | codes and nearest codes | (alpha, offset)."""
    S = bcq_signs(bits, xg.dtype, xg.device)
    S1 = torch.cat([S, torch.ones_like(S[:, :1])], 1)  # [L, q+1]: design row of each code
    outer = (S1[:, :, None] * S1[:, None, :]).reshape(len(S1), -1)  # [L, (q+1)^2]
    eye = torch.eye(bits + 1, dtype=xg.dtype, device=xg.device)
    L = 2**bits
    xm = xg * m
    if iters == 0:  # still return the nearest codes of the starting tables
        return nearest_codes(xg, bcq_lut(alpha, offset)), alpha, offset
    for _ in range(iters):
        # normal equations from per-code counts and sums (the design row depends only on the code)
        cnt = torch.zeros(*xg.shape[:2], L, dtype=xg.dtype, device=xg.device).scatter_add_(-1, codes, m)
        sums = torch.zeros_like(cnt).scatter_add_(-1, codes, xm)
        M = (cnt @ outer).reshape(*xg.shape[:2], bits + 1, bits + 1)
        rhs = sums @ S1
        ridge = 1e-9 * M.diagonal(dim1=-2, dim2=-1).sum(-1).clamp(min=1e-30)
        sol = torch.linalg.solve(M + ridge[..., None, None] * eye, rhs)
        alpha, offset = sol[..., :bits], sol[..., bits]
        new = nearest_codes(xg, bcq_lut(alpha, offset))
        if torch.equal(new, codes):
            break
        codes = new
    return codes, alpha, offset


def fit_bcq(xg: torch.Tensor, mask: torch.Tensor | None, bits: int, iters: int = 8):
    """Fit BCQ tables to grouped weights; returns ``({"alpha", "offset"}, codes int64 [N, G, g])``."""
    m = torch.ones_like(xg[:1]) if mask is None else mask.to(xg.dtype)[None].expand_as(xg[:1])
    m = m.expand_as(xg)
    cnt = m.sum(-1).clamp(min=1)
    # greedy start
    offset = (xg * m).sum(-1) / cnt
    r = (xg - offset[..., None]) * m
    alpha = torch.empty(*xg.shape[:2], bits, dtype=xg.dtype, device=xg.device)
    code = torch.zeros(xg.shape, dtype=torch.long, device=xg.device)
    for i in reversed(range(bits)):
        b = torch.where(r >= 0, 1.0, -1.0).to(xg.dtype)
        a = (r.abs() * m).sum(-1) / cnt
        alpha[..., i] = a
        code |= (b > 0).long() << i
        r = (r - a[..., None] * b) * m
    best = _refine(xg, m, code, alpha, offset, bits, iters)
    best_err = _sq_err(xg, m, bcq_lut(best[1], best[2]), best[0])
    # second start: the uniform (min/max) grid converted exactly; its unrefined form is kept as a fallback so
    # that no group ends worse than RTN
    u = fit_uniform(xg, mask, bits)
    p = uniform_to_bcq_params(u["scale"], u["zero"], bits)
    ucode = encode_uniform(xg, u["scale"], u["zero"], bits)
    runs = [_refine(xg, m, ucode, p["alpha"], p["offset"], bits, iters), (ucode, p["alpha"], p["offset"])]
    for cand in runs:
        err = _sq_err(xg, m, bcq_lut(cand[1], cand[2]), cand[0])
        take = err < best_err
        best = (torch.where(take[..., None], cand[0], best[0]), torch.where(take[..., None], cand[1], best[1]),
                torch.where(take, cand[2], best[2]))
        best_err = torch.minimum(err, best_err)
    codes, alpha, offset = best
    return {"alpha": alpha, "offset": offset}, codes
