"""Bench cases for memtool's LUT kernels (``memtool.kernels.lut_matmul``): affine (uniform) weights, g128,
2/3/4 bits, fp16 activations, timed against the harness baseline (``linear-fp16``, cuBLAS on GPU) and
``int4-tinygemm`` in the same run.

Each point builds a random packed :class:`~memtool.kernels.LutWeight` (random codes and parameters: the
kernels' speed does not depend on the values) and times ``lut_matmul(x, w)`` through the dispatcher (Triton
on CUDA, the CPU path on CPU). The first call of each point tunes the launch configuration; it happens in
``check`` (before timing). The byte count is the packed weight (codes + fp16 scale + fp16 bias per group)
plus activations and outputs, so the harness's "% of roofline" is exact for this format.

``lut_workload(n, k, m, bits, group, kind)`` is also usable directly: ``(setup, run)`` callables.
"""

from __future__ import annotations

from typing import Any

from memtool.bench.registry import BenchContext, Workload, bench_case

GROUP = 128


def make_weight(n: int, k: int, bits: int, group: int, kind: str, device: str, seed: int = 0):
    import torch

    from memtool.kernels import LutWeight

    g = torch.Generator(device="cpu").manual_seed(seed)
    groups = -(-k // group)
    codes = torch.randint(0, 2**bits, (n, k), dtype=torch.uint8, generator=g)
    scale = torch.rand(n, groups, generator=g) * (0.1 / k**0.5) + 1e-4
    if kind == "affine":
        w = LutWeight.from_codes(codes, kind, bits, group, scale=scale, bias=-scale * (2 ** (bits - 1)))
    elif kind == "bcq":
        w = LutWeight.from_codes(codes, kind, bits, group, alpha=torch.rand(n, groups, bits, generator=g) * 0.01,
                                 offset=torch.randn(n, groups, generator=g) * 0.01)  # fmt: skip
    else:
        w = LutWeight.from_codes(codes, kind, bits, group, scale=scale,
                                 table=torch.sort(torch.randn(2**bits, generator=g))[0])  # fmt: skip
    return w.to(device)


def lut_workload(n: int, k: int, m: int, bits: int, group: int, torch_device: str, kind: str = "affine") -> Workload:
    import torch

    from memtool.kernels import lut_matmul

    act = torch.float16 if torch_device != "cpu" else torch.float32

    def setup() -> tuple[Any, Any]:
        return torch.randn(m, k, device=torch_device, dtype=act), make_weight(n, k, bits, group, kind, torch_device)

    def run(st: tuple[Any, Any]) -> Any:
        return lut_matmul(st[0], st[1])

    extra: dict[str, Any] = {"kind": kind, "bits": bits}

    def check(st: tuple[Any, Any]) -> float:
        from memtool.kernels.lut_ref import lut_matmul_f64

        x, w = st
        y = lut_matmul(x, w)  # first call: tunes the launch configuration
        if x.is_cuda:  # the configuration the tuner picked, in the row
            from memtool.kernels.lut_triton import choose

            c = choose(x, w)
            extra["config"] = f"{c.path} bm{c.bm} bn{c.bn} split{c.split} w{c.num_warps} st{c.num_stages}" + (
                f" r{c.maxnreg}" if c.maxnreg else "")  # fmt: skip
        ref = lut_matmul_f64(x, w)
        return float((y.double() - ref).norm() / ref.norm())

    from memtool.kernels.lut_layout import words_per_row

    nbytes_w = n * words_per_row(bits, k) * 4 + n * (-(-k // group)) * 2 * 2  # codes + fp16 scale and bias
    act_b = 2 if act == torch.float16 else 4
    return Workload(n, k, m, dtype=f"lut {kind} {bits}-bit g{group}", setup=setup, run=run, weight_bits=bits,
                    group_size=group, scale_bits=16, zero_bits=16, act_bytes=act_b,
                    bytes=nbytes_w + m * k * act_b + m * n * act_b, check=check, extra=extra)  # fmt: skip


def _cases(bits: int):
    def case(ctx: BenchContext):
        if ctx.device == "cuda":
            try:
                import triton  # noqa: F401
            except ImportError:
                ctx.skip("triton is not installed")
        for n, k, m in ctx.grid():
            yield lut_workload(n, k, m, bits, GROUP, ctx.torch_device)

    case.__name__ = case.__qualname__ = f"lut_affine_{bits}bit"
    return case


for _b in (2, 3, 4):
    bench_case(f"lut-{_b}bit", group="lut",
               description=f"memtool LUT kernel, affine {_b}-bit g128 codes, fp16 activations "
                           f"(Triton on GPU, CPU path on CPU)")(_cases(_b))  # fmt: skip
