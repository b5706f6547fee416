"""A decoder's small ops in one kernel each: RMSNorm and the rotary embedding (Llama's formulas).

Why: transformers' ``LlamaRMSNorm`` runs as ~7 small kernels (upcast, square, mean, add, rsqrt, multiply, downcast,
multiply) and ``apply_rotary_pos_emb`` as ~10 (products, slices, negation, concatenation, sums); at decode (batch 1)
each is a launch of a few µs, and a Llama-2-7B has 65 norms and 32 rotary embeddings a token.

- :func:`rmsnorm`: ``weight * (x * rsqrt(mean(x^2) + eps)).to(x.dtype)``, one program per row (fp32 statistics, the
  module's roundings: the normalized row is rounded to the input's dtype before the weight multiplies it, the result
  has ``torch.result_type(weight, x)``).
- :func:`rope`: ``x * cos + rotate_half(x) * sin`` for x [B, H, S, D] (any strides) and cos / sin [B, S, D], one
  program per (b, h, s) row, each product and the sum rounded to x's dtype as torch's elementwise ops round them.

Each runs its Triton kernel on CUDA (and under ``TRITON_INTERPRET=1``, as the tests do) and the torch reference
(:func:`rmsnorm_ref`, :func:`rope_ref`: the modules' own arithmetic) elsewhere.
"""

from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl

    HAVE_TRITON = True
except Exception:  # noqa: BLE001
    HAVE_TRITON = False


def rmsnorm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """The module's arithmetic in torch (transformers' ``LlamaRMSNorm.forward``)."""
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


if HAVE_TRITON:

    @triton.jit
    def _rmsnorm_kernel(x_ptr, w_ptr, y_ptr, N, stride_x, stride_y, eps, BLOCK: tl.constexpr):
        """Row ``program_id`` of x [rows, N] -> y: fp32 mean of squares, the normalized row rounded to x's dtype,
        times the weight in fp32, rounded to y's dtype."""
        row = tl.program_id(0).to(tl.int64)
        offs = tl.arange(0, BLOCK)
        m = offs < N
        x = tl.load(x_ptr + row * stride_x + offs, mask=m, other=0.0).to(tl.float32)
        r = tl.rsqrt(tl.sum(x * x, axis=0) / N + eps)
        h = (x * r).to(x_ptr.dtype.element_ty).to(tl.float32)
        w = tl.load(w_ptr + offs, mask=m, other=0.0).to(tl.float32)
        tl.store(y_ptr + row * stride_y + offs, (w * h).to(y_ptr.dtype.element_ty), mask=m)


def runs_triton(x: torch.Tensor) -> bool:
    """Whether the kernels here take the Triton path for x: on CUDA, or under Triton's interpreter (the tests)."""
    return HAVE_TRITON and (x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1")


def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dimension of x (any leading shape) with ``weight`` [N]: one kernel launch on CUDA."""
    n = x.shape[-1]
    if weight.shape != (n,):
        raise ValueError(f"rmsnorm: weight of shape {tuple(weight.shape)} for rows of {n}")
    if not runs_triton(x) or x.dtype not in (torch.float16, torch.bfloat16, torch.float32) or n > 65536:
        return rmsnorm_ref(x, weight, eps)
    x2 = x.reshape(-1, n)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    out = torch.empty(x2.shape, dtype=torch.result_type(weight, x), device=x.device)
    if x2.shape[0]:
        block = triton.next_power_of_2(n)
        _rmsnorm_kernel[(x2.shape[0],)](x2, weight.contiguous(), out, n, x2.stride(0), out.stride(0), float(eps),
                                        BLOCK=block, num_warps=4 if block <= 2048 else 8)  # fmt: skip
    return out.reshape(*x.shape[:-1], n)


# ---------------------------------------------------------------------------------------------- rotary embedding
def rope_ref(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """transformers' rotary embedding of x [B, H, S, D] with cos / sin [B or 1, S, D]:
    ``x * cos + rotate_half(x) * sin``."""
    c, s = cos.unsqueeze(1), sin.unsqueeze(1)
    half = x.shape[-1] // 2
    return x * c + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * s


if HAVE_TRITON:

    @triton.jit
    def _rope_kernel(x_ptr, c_ptr, s_ptr, y_ptr, H, S, sxb, sxh, sxs, syb, syh, sys_, scb, scs, HALF,
                     BLOCK: tl.constexpr):  # fmt: skip
        """Row (b, h, s) of x -> y, each product and the sum rounded to x's dtype as torch's elementwise ops do."""
        pid = tl.program_id(0)
        s = pid % S
        h = (pid // S) % H
        b = pid // (S * H)
        d = tl.arange(0, BLOCK)
        m = d < HALF
        xr = x_ptr + b.to(tl.int64) * sxb + h * sxh + s * sxs
        cr = b.to(tl.int64) * scb + s * scs
        dt = x_ptr.dtype.element_ty
        x1 = tl.load(xr + d, mask=m, other=0.0).to(tl.float32)
        x2 = tl.load(xr + HALF + d, mask=m, other=0.0).to(tl.float32)
        c1 = tl.load(c_ptr + cr + d, mask=m, other=0.0).to(tl.float32)
        c2 = tl.load(c_ptr + cr + HALF + d, mask=m, other=0.0).to(tl.float32)
        s1 = tl.load(s_ptr + cr + d, mask=m, other=0.0).to(tl.float32)
        s2 = tl.load(s_ptr + cr + HALF + d, mask=m, other=0.0).to(tl.float32)
        lo = ((x1 * c1).to(dt).to(tl.float32) + (-x2 * s1).to(dt).to(tl.float32)).to(dt)
        hi = ((x2 * c2).to(dt).to(tl.float32) + (x1 * s2).to(dt).to(tl.float32)).to(dt)
        yr = y_ptr + b.to(tl.int64) * syb + h * syh + s * sys_
        tl.store(yr + d, lo, mask=m)
        tl.store(yr + HALF + d, hi, mask=m)


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of x [B, H, S, D] (any strides) with cos / sin [B or 1, S, D] of x's dtype: one launch on
    CUDA."""
    b, h, s, d = x.shape
    if (not runs_triton(x) or d % 2 or cos.shape[1:] != (s, d) or cos.shape[0] not in (1, b)
            or sin.shape != cos.shape or cos.dtype != x.dtype
            or sin.dtype != x.dtype or x.dtype not in (torch.float16, torch.bfloat16, torch.float32)
            or cos.stride(-1) != 1 or sin.stride() != cos.stride() or x.stride(-1) != 1):  # fmt: skip
        return rope_ref(x, cos, sin)
    y = torch.empty_like(x)  # x's strides where x is dense, else contiguous: the last dimension contiguous either way
    if x.numel():
        scb = cos.stride(0) if cos.shape[0] == b else 0  # one row of positions for every batch row
        _rope_kernel[(b * h * s,)](x, cos, sin, y, h, s, *x.stride()[:3], *y.stride()[:3], scb, cos.stride(1), d // 2,
                                   BLOCK=triton.next_power_of_2(d // 2), num_warps=1)  # fmt: skip
    return y
