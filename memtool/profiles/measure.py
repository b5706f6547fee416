"""Measure what the cost model needs (``memtool profile --measure``).

GPU (CUDA events, medians after warm-up): pinned and pageable host<->device bandwidth, both directions at once,
device-to-device copy bandwidth (counting bytes read + written), and a bf16/fp16 matmul peak on random data.
CPU: copy bandwidth (read + written), matmul GFLOP/s, and AdamW throughput (params/s, foreach and fused).
A measurement that fails is recorded as ``None`` with a note; it never aborts the others.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

from memtool.progress import Progress

GB = 1e9


def _median_wall(fn: Callable[[], Any], reps: int, warmup: int = 1, sync: Callable[[], Any] | None = None,
                 budget_s: float = 2.0) -> float:
    """Median wall time (s) of ``fn`` over up to ``reps`` calls (at least 3, stopping after ``budget_s``)."""
    for _ in range(warmup):
        fn()
    if sync:
        sync()
    ts: list[float] = []
    start = time.perf_counter()
    while len(ts) < reps and (len(ts) < 3 or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def cuda_time(fn: Callable[[], Any], reps: int = 10, warmup: int = 3, inner: int = 1) -> float:
    """Median seconds per call of ``fn`` measured with CUDA events (each sample = ``inner`` calls)."""
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    samples = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) / 1e3 / inner)
    return statistics.median(samples)


def _try(notes: list[str], what: str, fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - one failed measurement must not lose the others
        notes.append(f"{what}: not measured ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
        return None
    finally:
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:  # noqa: BLE001
            pass


# ----------------------------------------------------------------------------------------------------- GPU ---


def _gpu_h2d_d2h(nbytes: int, dev: str) -> dict[str, float]:
    import torch

    pinned = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    pinned.random_(0, 255)
    d = torch.empty(nbytes, dtype=torch.uint8, device=dev)
    d.random_(0, 255)
    h2d = cuda_time(lambda: d.copy_(pinned, non_blocking=True), reps=10)
    d2h = cuda_time(lambda: pinned.copy_(d, non_blocking=True), reps=10)
    # both directions at once on two streams: total bytes / wall time of the pair
    d2 = torch.empty_like(d)
    pinned2 = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    s1, s2 = torch.cuda.Stream(), torch.cuda.Stream()

    def both() -> None:
        cur = torch.cuda.current_stream()
        s1.wait_stream(cur)
        s2.wait_stream(cur)
        with torch.cuda.stream(s1):
            d.copy_(pinned, non_blocking=True)
        with torch.cuda.stream(s2):
            pinned2.copy_(d2, non_blocking=True)
        cur.wait_stream(s1)
        cur.wait_stream(s2)

    bidir = cuda_time(both, reps=10)
    return {"h2d_pinned_gbs": nbytes / h2d / GB, "d2h_pinned_gbs": nbytes / d2h / GB,
            "bidir_pinned_gbs": 2 * nbytes / bidir / GB}


def _gpu_pageable(nbytes: int, dev: str) -> dict[str, float]:
    import torch

    host = torch.empty(nbytes, dtype=torch.uint8)
    host.random_(0, 255)
    d = torch.empty(nbytes, dtype=torch.uint8, device=dev)
    sync = torch.cuda.synchronize
    h2d = _median_wall(lambda: d.copy_(host), reps=5, warmup=1, sync=sync)
    d2h = _median_wall(lambda: host.copy_(d), reps=5, warmup=1, sync=sync)
    return {"h2d_pageable_gbs": nbytes / h2d / GB, "d2h_pageable_gbs": nbytes / d2h / GB}


def _gpu_d2d(nbytes: int, dev: str) -> float:
    import torch

    a = torch.empty(nbytes, dtype=torch.uint8, device=dev)
    a.random_(0, 255)
    b = torch.empty_like(a)
    t = cuda_time(lambda: b.copy_(a), reps=20, warmup=3)
    return 2 * nbytes / t / GB  # read + write


def _gpu_matmul(n: int, dtype_name: str, dev: str) -> float:
    import torch

    dtype = getattr(torch, dtype_name)
    g = torch.Generator(device=dev).manual_seed(0)
    a = torch.randn(n, n, device=dev, dtype=dtype, generator=g)
    b = torch.randn(n, n, device=dev, dtype=dtype, generator=g)
    c = torch.empty(n, n, device=dev, dtype=dtype)
    t = cuda_time(lambda: torch.matmul(a, b, out=c), reps=10, warmup=5)
    return 2 * n**3 / t / 1e12


def measure_gpu(device: str = "cuda", quick: bool = False, progress: Progress | None = None) -> tuple[dict, list[str]]:
    import torch

    if torch.device(device).index is not None:
        torch.cuda.set_device(torch.device(device))
    progress = progress or Progress()
    notes: list[str] = []
    nb = (64 if quick else 256) << 20
    n = 4096 if quick else 8192
    res: dict[str, Any] = {"device": device, "transfer_bytes": nb, "matmul_n": n}
    res.update(dict.fromkeys(["h2d_pinned_gbs", "d2h_pinned_gbs", "bidir_pinned_gbs", "h2d_pageable_gbs",
                              "d2h_pageable_gbs", "d2d_copy_gbs", "matmul_bf16_tflops", "matmul_fp16_tflops"]))
    steps: list[tuple[str, Callable[[], dict]]] = [
        ("pinned transfers", lambda: _gpu_h2d_d2h(nb, device)),
        ("pageable transfers", lambda: _gpu_pageable(nb, device)),
        ("device copy", lambda: {"d2d_copy_gbs": _gpu_d2d(4 * nb, device)}),
        ("bf16 matmul", lambda: {"matmul_bf16_tflops": _gpu_matmul(n, "bfloat16", device)}),
        ("fp16 matmul", lambda: {"matmul_fp16_tflops": _gpu_matmul(n, "float16", device)}),
    ]
    with progress.task("measure GPU", total=len(steps)) as t:
        for desc, fn in steps:
            res.update(_try(notes, f"GPU {desc}", fn) or {})
            t.advance(1, desc)
    return res, notes


# ----------------------------------------------------------------------------------------------------- CPU ---


def _cpu_copy(nbytes: int) -> float:
    import torch

    a = torch.empty(nbytes, dtype=torch.uint8)
    a.random_(0, 255)
    b = torch.empty_like(a)
    t = _median_wall(lambda: b.copy_(a), reps=7, warmup=2)
    return 2 * nbytes / t / GB


def _cpu_matmul(n: int, dtype_name: str) -> float:
    import torch

    dtype = getattr(torch, dtype_name)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(dtype)
    b = torch.randn(n, n, generator=g).to(dtype)
    c = torch.empty(n, n, dtype=dtype)
    t = _median_wall(lambda: torch.matmul(a, b, out=c), reps=5, warmup=1)
    return 2 * n**3 / t / 1e9


def _cpu_adam(n_params: int, impl: str) -> float:
    """AdamW steps/s on CPU fp32 tensors, as params/s (8 tensors of n_params/8)."""
    import torch

    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(n_params // 8, generator=g)) for _ in range(8)]
    for p in params:
        p.grad = torch.randn(p.shape, generator=g) * 1e-3
    kw = {"foreach": True} if impl == "foreach" else {"fused": True}
    opt = torch.optim.AdamW(params, lr=1e-4, **kw)
    t = _median_wall(opt.step, reps=5, warmup=2)
    return sum(p.numel() for p in params) / t


def measure_cpu(quick: bool = False, progress: Progress | None = None, cores: int | None = None) -> tuple[dict, list[str]]:
    import os

    progress = progress or Progress()
    notes: list[str] = []
    cores = cores or os.cpu_count() or 1
    small = quick or cores <= 4
    nb = (32 if quick else 256) << 20
    n = 512 if quick else (1024 if small else 4096)
    adam_params = (1 << 18) if quick else ((4 << 20) if small else (64 << 20))
    res: dict[str, Any] = {"copy_bytes": nb, "matmul_n": n, "adam_params": adam_params}
    steps: list[tuple[str, str, Callable[[], Any]]] = [
        ("copy_gbs", "memory copy", lambda: _cpu_copy(nb)),
        ("matmul_fp32_gflops", "fp32 matmul", lambda: _cpu_matmul(n, "float32")),
        ("matmul_bf16_gflops", "bf16 matmul", lambda: _cpu_matmul(n, "bfloat16")),
        ("adamw_foreach_params_per_s", "AdamW foreach", lambda: _cpu_adam(adam_params, "foreach")),
        ("adamw_fused_params_per_s", "AdamW fused", lambda: _cpu_adam(adam_params, "fused")),
    ]
    with progress.task("measure CPU", total=len(steps)) as t:
        for key, desc, fn in steps:
            res[key] = _try(notes, f"CPU {desc}", fn)
            t.advance(1, desc)
    return res, notes


def measure(device: str | None = None, quick: bool = False, progress: Progress | None = None) -> dict[str, Any]:
    """Measure the CPU, and the GPU when ``device`` is a CUDA device (default: cuda:0 when available).

    Returns ``{"cpu": {...}, "gpu": {...} | None, "notes": [...]}``; on a CPU-only machine ``gpu`` is None and a
    note says the GPU numbers are n/a.
    """
    import torch

    if device is None:
        device = "cuda:0" if torch.cuda.is_available() else "cpu"
    notes: list[str] = []
    gpu = None
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            from memtool.errors import UsageError

            raise UsageError(f"device {device} requested but torch sees no CUDA GPU")
        gpu, n = measure_gpu(device, quick=quick, progress=progress)
        notes += n
    else:
        notes.append("no CUDA GPU: H2D/D2H, device copy and GPU matmul are n/a")
    cpu, n = measure_cpu(quick=quick, progress=progress)
    notes += n
    return {"cpu": cpu, "gpu": gpu, "quick": quick, "notes": notes}
