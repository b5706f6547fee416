"""RMSNorm in one kernel: ``y = weight * (x * rsqrt(mean(x^2) + eps)).to(x.dtype)`` per row (Llama's formula).

Why: transformers' ``LlamaRMSNorm`` runs as ~7 small kernels (upcast, square, mean, add, rsqrt, multiply, downcast,
multiply); at decode (batch 1) each is a launch of a few µs, and a Llama-2-7B has 65 norms a token. This is one
Triton program per row (fp32 statistics, the same roundings as the module: the normalized row is rounded to the
input's dtype before the weight multiplies it, the result has ``torch.result_type(weight, x)``).

:func:`rmsnorm` runs the Triton kernel on CUDA (and under ``TRITON_INTERPRET=1``, as the tests do) and
:func:`rmsnorm_ref` (plain torch, the module's own arithmetic) elsewhere.
"""

from __future__ import annotations

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


def _use_triton(x: torch.Tensor) -> bool:
    import os

    return HAVE_TRITON and (x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1")


def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dimension of x (any leading shape) with ``weight`` [N]: one kernel launch on CUDA."""
    n = x.shape[-1]
    if weight.shape != (n,):
        raise ValueError(f"rmsnorm: weight of shape {tuple(weight.shape)} for rows of {n}")
    if not _use_triton(x) or x.dtype not in (torch.float16, torch.bfloat16, torch.float32) or n > 65536:
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
