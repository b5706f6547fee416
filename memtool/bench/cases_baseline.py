"""Baseline bench cases: fp16 ``torch.nn.functional.linear`` (cuBLAS on GPU) and torch's int4 weight-only
"tinygemm" kernel (``torch.ops.aten._weight_int4pack_mm``; ``_weight_int4pack_mm_for_cpu`` on CPU).

Shapes are N x K = out_features x in_features; weight (N, K), activations (M, K), y = x @ W.T.
"""

from __future__ import annotations

import functools
from typing import Any

from memtool.bench.registry import BenchContext, Workload, bench_case

INT4_GROUP = 128
INT4_INNER_K_TILES = 8


def linear_workload(n: int, k: int, m: int, torch_device: str, dtype_name: str = "float16") -> Workload:
    """An ``F.linear`` workload with random weights/activations of ``dtype_name`` (also the harness baseline)."""
    import torch
    import torch.nn.functional as F

    dtype = getattr(torch, dtype_name)
    label = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}.get(dtype_name, dtype_name)

    def setup() -> tuple[Any, Any]:
        w = torch.randn(n, k, device=torch_device, dtype=dtype) * k**-0.5
        x = torch.randn(m, k, device=torch_device, dtype=dtype)
        return x, w

    def run(st: tuple[Any, Any]) -> Any:
        return F.linear(st[0], st[1])

    nbytes = torch.finfo(dtype).bits / 8
    return Workload(n, k, m, dtype=label, setup=setup, run=run, weight_bits=8 * nbytes, act_bytes=nbytes)


@bench_case("linear-fp16", group="baseline", description="torch.nn.functional.linear, fp16 weights and "
            "activations (cuBLAS on GPU); the speedup baseline")
def linear_fp16(ctx: BenchContext):
    for n, k, m in ctx.grid():
        yield linear_workload(n, k, m, ctx.torch_device, "float16")


# ------------------------------------------------------------------------------------------ int4 tinygemm ---


def _aten(name: str) -> Any:
    import torch

    try:
        return getattr(torch.ops.aten, name)
    except (AttributeError, RuntimeError):
        return None


def int4_ops(device: str) -> tuple[Any, Any] | None:
    """(convert, mm) aten ops of torch's int4 weight-only kernel for "cuda" or "cpu", or None if absent."""
    names = ("_convert_weight_to_int4pack", "_weight_int4pack_mm") if device == "cuda" else \
        ("_convert_weight_to_int4pack_for_cpu", "_weight_int4pack_mm_for_cpu")
    ops = tuple(_aten(nm) for nm in names)
    return ops if all(ops) else None  # type: ignore[return-value]


def quantize_int4(w: Any, group_size: int = INT4_GROUP) -> tuple[Any, Any, Any]:
    """Asymmetric 4-bit groupwise quantization in tinygemm's convention.

    Returns ``q`` (N, K) int32 in [0, 15], ``scales_and_zeros`` (K/group, N, 2) bf16, and the dequantized weight
    (N, K) float32 computed from the bf16 scales/zeros: ``w_hat = (q - 8) * scale + zero``.
    """
    import torch

    n, k = w.shape
    wg = w.float().reshape(n, k // group_size, group_size)
    lo, hi = wg.amin(-1, keepdim=True), wg.amax(-1, keepdim=True)
    scale = ((hi - lo) / 15).clamp(min=1e-6)
    q = ((wg - lo) / scale).round().clamp(0, 15)
    zero = lo + scale * 8
    sz = torch.stack([scale.squeeze(-1), zero.squeeze(-1)], -1).transpose(0, 1).contiguous().to(torch.bfloat16)
    s_b, z_b = sz[..., 0].float().t().unsqueeze(-1), sz[..., 1].float().t().unsqueeze(-1)
    deq = ((q - 8) * s_b + z_b).reshape(n, k)
    return q.reshape(n, k).to(torch.int32), sz, deq


def pack_int4(q: Any, device: str, nibble_hi_first: bool = True) -> Any:
    """Pack int32 codes (N, K) into tinygemm's layout on ``q.device``.

    CPU (torch >= 2.6) takes the int32 codes directly. CUDA (torch >= 2.5) takes uint8 (N, K/2), two codes per
    byte; older torch took int32 (N, K), which is the fallback.
    """
    import torch

    convert, _ = int4_ops(device)  # type: ignore[misc]
    if device == "cpu":
        return convert(q.contiguous(), INT4_INNER_K_TILES)
    a, b = (q[:, ::2], q[:, 1::2]) if nibble_hi_first else (q[:, 1::2], q[:, ::2])
    u8 = ((a << 4) | b).to(torch.uint8).contiguous()
    try:
        return convert(u8, INT4_INNER_K_TILES)
    except RuntimeError:
        return convert(q.contiguous(), INT4_INNER_K_TILES)


def int4_check(n: int, k: int, m: int, torch_device: str, device: str, nibble_hi_first: bool = True) -> float:
    """Relative error of the int4 kernel against x @ dequant(W).T on fresh random data (float32 reference)."""
    import torch

    _, mm = int4_ops(device)  # type: ignore[misc]
    w = torch.randn(n, k, device=torch_device)
    x = torch.randn(m, k, device=torch_device, dtype=torch.bfloat16)
    q, sz, deq = quantize_int4(w)
    y = mm(x, pack_int4(q, device, nibble_hi_first), INT4_GROUP, sz).float()
    ref = x.float() @ deq.t()
    return float((y - ref).norm() / ref.norm())


@functools.lru_cache(maxsize=None)
def cuda_nibble_order(torch_device: str) -> bool:
    """Which nibble goes first in CUDA's uint8 packing input, found by checking both on a small problem."""
    errs = {hi: int4_check(256, 512, 4, torch_device, "cuda", hi) for hi in (True, False)}
    return min(errs, key=errs.get)  # type: ignore[arg-type]


@bench_case("int4-tinygemm", group="baseline", description="torch int4 weight-only kernel "
            "(aten._weight_int4pack_mm, asymmetric g128, bf16 activations)")
def int4_tinygemm(ctx: BenchContext):
    ops = int4_ops(ctx.device)
    if ops is None:
        ctx.skip(f"this torch has no int4 weight-only kernel for {ctx.device}")
    _, mm = ops
    hi_first = cuda_nibble_order(ctx.torch_device) if ctx.device == "cuda" else True
    for n, k, m in ctx.grid():
        if k % (INT4_INNER_K_TILES * 16) or k % INT4_GROUP or n % 8:
            ctx.note(f"int4-tinygemm: shape {n}x{k} skipped (needs K % 128 == 0 and N % 8 == 0)")
            continue

        def setup(n: int = n, k: int = k, m: int = m) -> tuple[Any, Any, Any]:
            import torch

            # random codes and scales/zeros straight away (timing does not depend on the values; `check`
            # validates real quantization): cheap to build the many rotated copies
            q = torch.randint(0, 16, (n, k), device=ctx.torch_device, dtype=torch.int32)
            scale = torch.rand(k // INT4_GROUP, n, device=ctx.torch_device) * (0.1 / k**0.5) + 1e-4
            zero = torch.randn(k // INT4_GROUP, n, device=ctx.torch_device) * (0.1 / k**0.5)
            sz = torch.stack([scale, zero], -1).to(torch.bfloat16).contiguous()
            packed = pack_int4(q, ctx.device, hi_first)
            x = torch.randn(m, k, device=ctx.torch_device, dtype=torch.bfloat16)
            return x, packed, sz

        def check(_state: Any, n: int = n, k: int = k, m: int = m) -> float:
            return int4_check(min(n, 1024), min(k, 1024), m, ctx.torch_device, ctx.device, hi_first)

        yield Workload(n, k, m, dtype="int4 g128 (bf16 act)", setup=setup,
                       run=lambda st: mm(st[0], st[1], INT4_GROUP, st[2]),
                       weight_bits=4, group_size=INT4_GROUP, scale_bits=16, zero_bits=16, act_bytes=2, check=check)
