"""The common bench runner: build rotated inputs, time, compare with the fp16 baseline, report rows.

Timing. GPU: ``triton.testing.do_bench`` median (it warms up and flushes L2 between calls) or, with
``timer="events"``, CUDA events around back-to-back calls; ``cuda_graph=True`` captures the calls in a CUDA graph
first (removes launch overhead; at least :data:`GRAPH_CALLS` calls a replay, so the replay's own cost is spread
thin) and then times with events by default (``timer="auto"``). CPU: ``time.perf_counter`` median per call,
labelled ``device=cpu``.

Rotation. Every workload is built ``copies`` times (weights and activations) and the timed calls cycle through
the copies, so the data a call reads was evicted by the calls before it: ``copies * bytes`` exceeds 3x the L2
(GPU) or last-level cache (CPU) whenever memory allows, and is at least 2.

Each row: case, device, shape (N x K = out x in features), m, dtype, time_us, gbps (ideal bytes moved / time),
tflops, roofline_pct (roofline time from the hardware profile / time), speedup (time of the fp16
``F.linear`` baseline of the same N, K, M measured in this process / time), copies, timer.
"""

from __future__ import annotations

import itertools
import math
import os
import re
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from memtool.bench.registry import BASELINE_CASE, BenchCase, BenchContext, SkipCase, Workload, select_cases
from memtool.errors import ResourceError, UsageError
from memtool.progress import Progress

DEFAULT_SHAPES = {"cuda": [(4096, 4096), (8192, 28672), (28672, 8192)], "cpu": [(2048, 2048), (4096, 4096)]}
DEFAULT_MS = {"cuda": [1, 16, 64], "cpu": [1, 16]}
QUICK_SHAPES = {"cuda": [(4096, 4096)], "cpu": [(256, 512), (1024, 1024)]}
QUICK_MS = {"cuda": [1, 16], "cpu": [1, 8]}
TIMERS = ("auto", "do_bench", "events")
MAX_COPIES = 64
GRAPH_CALLS = 32  # calls a CUDA-graph replay makes, at least (--cuda-graph)
CONVENTION = "shape = N x K (out x in features); weight (N, K), x (M, K), y = x @ W.T (M, N)"


@dataclass
class BenchReport:
    rows: list[dict[str, Any]]
    meta: dict[str, Any]
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------ parsing ---


def parse_ms(text: str | None) -> list[int] | None:
    """"1,16,64" -> [1, 16, 64]."""
    if not text:
        return None
    try:
        ms = [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise UsageError(f"--m must be comma-separated positive integers, got {text!r}") from None
    if not ms or min(ms) <= 0:
        raise UsageError(f"--m must be comma-separated positive integers, got {text!r}")
    return ms


def parse_shapes(text: str | None) -> list[tuple[int, int]] | None:
    """"4096x4096,8192x28672" -> [(4096, 4096), (8192, 28672)] (N x K)."""
    if not text:
        return None
    out = []
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        mt = re.fullmatch(r"(\d+)[xX*](\d+)", part)
        if not mt or int(mt.group(1)) <= 0 or int(mt.group(2)) <= 0:
            raise UsageError(f"--shapes entries must look like 4096x4096 (N x K), got {part!r}")
        out.append((int(mt.group(1)), int(mt.group(2))))
    if not out:
        raise UsageError(f"--shapes is empty: {text!r}")
    return out


def resolve_device(device: str | None) -> tuple[str, str]:
    """("cuda" | "cpu", torch device string) for "auto"/None, "cpu", "cuda" or "cuda:N"."""
    import torch

    device = (device or "auto").lower()
    if device == "auto":
        return ("cuda", "cuda:0") if torch.cuda.is_available() else ("cpu", "cpu")
    if device == "cpu":
        return "cpu", "cpu"
    if re.fullmatch(r"cuda(:\d+)?", device):
        if not torch.cuda.is_available():
            raise UsageError(f"--device {device}: torch sees no CUDA GPU")
        idx = int(device.split(":")[1]) if ":" in device else 0
        if idx >= torch.cuda.device_count():
            raise UsageError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s)")
        return "cuda", f"cuda:{idx}"
    raise UsageError(f"--device must be auto, cpu, cuda or cuda:N, got {device!r}")


# ------------------------------------------------------------------------------------------------- timing ---


def time_cpu(step: Callable[[], Any], budget_s: float = 0.3, min_reps: int = 5, max_reps: int = 2000) -> float:
    """Median seconds per call (perf_counter) after two warm-up calls."""
    step()
    t0 = time.perf_counter()
    step()
    est = max(time.perf_counter() - t0, 1e-7)
    reps = int(min(max(budget_s / est, min_reps), max_reps))
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        step()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def _do_bench(fn: Callable[[], Any]) -> float:
    from triton.testing import do_bench

    try:
        ms = do_bench(fn, warmup=25, rep=100, return_mode="median")
    except TypeError:  # older Triton without return_mode
        ms = do_bench(fn, warmup=25, rep=100, quantiles=[0.5])
        ms = ms[0] if isinstance(ms, (list, tuple)) else ms
    return float(ms) / 1e3


def time_cuda(step: Callable[[], Any], calls_per_step: int, timer: str, copies: int) -> float:
    """Median seconds per call on the GPU; ``step`` performs ``calls_per_step`` calls."""
    if timer == "do_bench":
        return _do_bench(step) / calls_per_step
    from memtool.profiles.measure import cuda_time

    inner = max(1, math.ceil(max(copies, 20) / calls_per_step))  # back-to-back, a full rotation per sample
    return cuda_time(step, reps=20, warmup=5, inner=inner) / calls_per_step


def n_copies(per_copy: float, cache_bytes: int | None, cap_bytes: float) -> int:
    """Copies so that together they exceed 3x the cache (at least 2), within ``cap_bytes`` and MAX_COPIES."""
    target = 3 * (cache_bytes or (64 << 20))
    c = max(2, math.ceil(target / max(per_copy, 1)))
    c = min(c, MAX_COPIES, int(cap_bytes // max(per_copy, 1)))
    return max(1, c)


def _cap_bytes(device: str, torch_device: str) -> float:
    if device == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info(torch.device(torch_device))
        return min(8 << 30, 0.3 * free)
    import psutil

    return min(1 << 30, 0.25 * psutil.virtual_memory().available)


# ------------------------------------------------------------------------------------------------- runner ---


class _Runner:
    def __init__(self, ctx: BenchContext, profile: Any, timer: str, cuda_graph: bool, budget_s: float,
                 progress: Progress):
        self.ctx, self.profile, self.timer, self.cuda_graph = ctx, profile, timer, cuda_graph
        self.budget_s, self.progress = budget_s, progress
        self.baseline: dict[tuple[int, int, int], float] = {}
        self.cap = _cap_bytes(ctx.device, ctx.torch_device)

    def _sync(self) -> None:
        if self.ctx.device == "cuda":
            import torch

            torch.cuda.synchronize()

    def _free(self) -> None:
        if self.ctx.device == "cuda":
            import torch

            torch.cuda.empty_cache()

    def time_workload(self, w: Workload) -> tuple[float, int, float | None]:
        """(seconds per call, copies, rel_err) for one workload."""
        nbytes, _ = w.traffic()
        copies = n_copies(nbytes, self.profile.cache_bytes, self.cap)
        states = [w.setup() for _ in range(copies)]
        try:
            rel_err = float(w.check(states[0])) if w.check else None
            for st in states:  # one call per copy: lazy per-weight work (tuning, CPU caches) stays out of the timing
                w.run(st)
            self._sync()
            if self.ctx.device == "cpu":
                it = itertools.cycle(states)
                return time_cpu(lambda: w.run(next(it)), self.budget_s), copies, rel_err
            if self.cuda_graph:
                step, calls = self._graph(w, states)
            else:
                it = itertools.cycle(states)
                step, calls = (lambda: w.run(next(it))), 1
            return time_cuda(step, calls, self.timer, copies), copies, rel_err
        finally:
            del states
            self._free()

    def _graph(self, w: Workload, states: list[Any]) -> tuple[Callable[[], Any], int]:
        import torch

        # at least GRAPH_CALLS calls a replay: the replay's own cost (its launch; do_bench's L2 flush, whose dirty
        # lines are written back while the first call reads) is ~14 us on an H100, so it must not sit on few calls
        reps = max(1, math.ceil(GRAPH_CALLS / len(states)))
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for st in states:
                w.run(st)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(reps):
                for st in states:
                    w.run(st)
        return graph.replay, reps * len(states)

    def baseline_time(self, n: int, k: int, m: int) -> float | None:
        key = (n, k, m)
        if key not in self.baseline:
            from memtool.bench.cases_baseline import linear_workload

            try:
                self.baseline[key] = self.time_workload(linear_workload(n, k, m, self.ctx.torch_device))[0]
            except Exception as e:  # noqa: BLE001 - the row stays, only its speedup is unknown
                self.ctx.note(f"baseline {n}x{k} M={m} failed: {type(e).__name__}: {e}")
                self.baseline[key] = None  # type: ignore[assignment]
        return self.baseline[key]

    def row(self, case: BenchCase, w: Workload, secs: float, copies: int, rel_err: float | None,
            with_speedup: bool) -> dict[str, Any]:
        from memtool.profiles.cost import roofline_time

        nbytes, flops = w.traffic()
        roof = roofline_time(nbytes, flops, self.profile)["t_roofline"]
        row: dict[str, Any] = {
            "case": case.name, "device": self.ctx.device, "shape": f"{w.n}x{w.k}", "m": w.m, "dtype": w.dtype,
            "time_us": secs * 1e6, "gbps": nbytes / secs / 1e9, "tflops": flops / secs / 1e12,
            "roofline_us": roof * 1e6 if roof is not None else None,
            "roofline_pct": 100 * roof / secs if roof is not None else None,
        }
        if with_speedup:
            if case.name == BASELINE_CASE:
                self.baseline.setdefault((w.n, w.k, w.m), secs)
            base = self.baseline_time(w.n, w.k, w.m)
            row["speedup"] = base / secs if base else None
        row.update({"copies": copies, "timer": self.timer_label(), "n": w.n, "k": w.k, "bytes": nbytes,
                    "flops": flops})
        if rel_err is not None:
            row["rel_err"] = rel_err
        row.update(w.extra)
        return row

    def timer_label(self) -> str:
        if self.ctx.device == "cpu":
            return "perf_counter"
        return self.timer + ("+graph" if self.cuda_graph else "")


def run_bench(
    cases: list[str] | None = None,
    *,
    groups: list[str] | None = None,
    device: str | None = None,
    ms: list[int] | None = None,
    shapes: list[tuple[int, int]] | None = None,
    quick: bool = False,
    timer: str = "auto",
    cuda_graph: bool = False,
    baseline: bool = True,
    profile: Any = None,
    budget_s: float | None = None,
    threads: int | None = None,
    progress: Progress | None = None,
) -> BenchReport:
    """Run the selected cases (default: all registered) over the grid and return rows + meta + notes.

    ``threads`` sets torch's CPU thread count for the run (restored afterwards); on a loaded machine one thread
    gives steadier CPU timings than several threads that wait for each other.
    """
    import torch

    if threads is not None and threads < 1:
        raise UsageError(f"--threads must be at least 1, got {threads}")
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _run_bench(cases, groups, device, ms, shapes, quick, timer, cuda_graph, baseline, profile, budget_s,
                          progress)
    finally:
        torch.set_num_threads(old_threads)


def _run_bench(cases, groups, device, ms, shapes, quick, timer, cuda_graph, baseline, profile, budget_s,
               progress) -> BenchReport:
    from memtool.bench.registry import load_case_modules
    from memtool.profiles.store import current_profile

    load_at_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    progress = progress or Progress()
    if timer not in TIMERS:
        raise UsageError(f"--timer must be one of {', '.join(TIMERS)}, got {timer!r}")
    kind, torch_device = resolve_device(device)
    if cuda_graph and kind != "cuda":
        raise UsageError("--cuda-graph needs a CUDA device")
    notes = list(load_case_modules())
    selected = select_cases(cases, groups)
    if not selected:
        raise UsageError("no bench case selected")
    if kind == "cuda":
        import torch

        torch.cuda.set_device(torch.device(torch_device))
        if timer == "auto" and cuda_graph:  # replays back to back, the steady state of a long graph (do_bench
            timer = "events"  # flushes the L2 before each replay, and the dirty lines are written back during it)
        elif timer == "auto":
            try:
                import triton.testing  # noqa: F401

                timer = "do_bench"
            except Exception:  # noqa: BLE001
                timer = "events"
    else:
        timer = "perf_counter"
    prof = profile if profile is not None else current_profile(torch_device)
    ctx = BenchContext(
        device=kind,
        shapes=shapes or (QUICK_SHAPES if quick else DEFAULT_SHAPES)[kind],
        ms=ms or (QUICK_MS if quick else DEFAULT_MS)[kind],
        quick=quick,
        torch_device=torch_device,
    )
    budget = budget_s if budget_s is not None else (0.1 if quick else 0.3)
    runner = _Runner(ctx, prof, timer, cuda_graph, budget, progress)
    rows: list[dict[str, Any]] = []
    # the baseline first, so that its rows and the speedups of other cases share one measurement
    selected.sort(key=lambda c: c.name != BASELINE_CASE)
    with progress.task(f"bench on {kind}", total=None) as task:
        for case in selected:
            try:
                for w in case.workloads(ctx):
                    label = f"{case.name} {w.n}x{w.k} M={w.m}"
                    try:
                        secs, copies, rel_err = runner.time_workload(w)
                    except SkipCase as e:
                        ctx.note(f"{label} skipped: {e}")
                        continue
                    except Exception as e:  # noqa: BLE001 - one failing point must not lose the others
                        if "out of memory" in str(e).lower():
                            ctx.note(f"{label} skipped: out of memory")
                            runner._free()
                            continue
                        if isinstance(e, (UsageError, ResourceError)):
                            raise
                        ctx.note(f"{label} failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
                        continue
                    row = runner.row(case, w, secs, copies, rel_err, baseline)
                    rows.append(row)
                    task.advance(1, f"{label}: {row['time_us']:.1f} us")
            except SkipCase as e:
                ctx.note(f"{case.name} skipped: {e}")
    import torch

    meta = {
        "device": kind if kind == "cpu" else torch_device,
        "device_name": prof.device_name,
        "timer": runner.timer_label(),
        "profile": f"{prof.source} ({prof.key})",
        "mem_bw_gbs": prof.mem_bw_gbs,
        "mem_bw_source": prof.mem_bw_source,
        "peak_tflops": prof.peak_tflops,
        "peak_source": prof.peak_source,
        "cache_bytes": prof.cache_bytes,
        "torch": torch.__version__,
        "convention": CONVENTION,
        "baseline": f"{BASELINE_CASE} of the same N, K, M, measured in this process" if baseline else "off",
    }
    if kind == "cpu":
        meta["threads"] = torch.get_num_threads()
        notes.append("CPU timings (device=cpu): perf_counter medians, not GPU numbers")
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        if load_at_start > 0.5 * cores:
            notes.append(f"the machine was busy (load average {load_at_start:.1f} on {cores} cores before the "
                         "run): CPU timings are unreliable; rerun when idle or with --threads 1")
    if prof.mem_bw_gbs is None:
        notes.append("roofline_pct is empty: the profile has no bandwidth; run `memtool profile --measure`")
    notes += prof.notes + ctx.notes
    if os.environ.get("TRITON_INTERPRET") == "1" and kind == "cuda":
        notes.append("TRITON_INTERPRET=1 is set: Triton kernels run in the interpreter")
    return BenchReport(rows=rows, meta=meta, notes=list(dict.fromkeys(notes)))


# --------------------------------------------------------------------------------------------------- plot ---


def plot_rows(rows: list[dict[str, Any]], path: str, title: str = "memtool bench") -> str:
    """Bar charts of time and % of roofline per (shape, M) and case; written atomically to ``path`` (PNG)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("--plot needs matplotlib: pip install 'memtool[plot]' (or pip install matplotlib)") from None
    from pathlib import Path

    out = Path(path)
    if out.suffix.lower() != ".png":
        raise UsageError(f"--plot writes a PNG; give a path ending in .png, got {path!r}")
    if not out.parent.exists():
        raise UsageError(f"--plot: directory {out.parent} does not exist")
    if not rows:
        raise UsageError("--plot: no rows to plot")
    groups = list(dict.fromkeys(f"{r['shape']}\nM={r['m']}" for r in rows))
    cases = list(dict.fromkeys(r["case"] for r in rows))
    width = 0.8 / len(cases)
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.4 * len(groups) * 2), 4.5))
    for ax, key, label in ((axes[0], "time_us", "time per call (us, log)"), (axes[1], "roofline_pct", "% of roofline")):
        for ci, case in enumerate(cases):
            vals = []
            for g in groups:
                r = next((r for r in rows if r["case"] == case and f"{r['shape']}\nM={r['m']}" == g), None)
                vals.append(r.get(key) if r and r.get(key) is not None else float("nan"))
            ax.bar([i + ci * width for i in range(len(groups))], vals, width, label=case)
        ax.set_xticks([i + width * (len(cases) - 1) / 2 for i in range(len(groups))])
        ax.set_xticklabels(groups, fontsize=8)
        ax.set_ylabel(label)
        if key == "time_us":
            ax.set_yscale("log")
        else:
            ax.axhline(100, color="k", lw=0.8, ls="--")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{title} ({rows[0].get('device')}, {rows[0].get('timer')})")
    fig.tight_layout()
    tmp = out.with_name(f".{out.name}.tmp.png")
    try:
        fig.savefig(tmp, dpi=120)
        os.replace(tmp, out)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return str(out)
