import math

import pytest
import torch

from memtool.bench import harness
from memtool.bench.cases_baseline import linear_workload
from memtool.bench.harness import n_copies, parse_ms, parse_shapes, plot_rows, run_bench
from memtool.bench.registry import Workload, bench_case, unregister_case
from memtool.errors import UsageError
from memtool.profiles.profile import Profile

REQUIRED = {"case", "device", "shape", "m", "dtype", "time_us", "gbps", "tflops", "roofline_pct", "speedup",
            "copies", "timer", "bytes", "flops"}
FAKE_CPU = Profile(key="cpu-test", source="measured", device="cpu", device_name="test cpu", mem_bw_gbs=10.0,
                   peak_tflops=0.1, cache_bytes=1 << 20)


@pytest.fixture()
def same_as_baseline():
    """A case doing exactly what the baseline does, and a counter of setup calls."""
    calls = {"setup": 0}

    @bench_case("test-same-as-baseline", group="test")
    def case(ctx):
        for n, k, m in ctx.grid():
            w = linear_workload(n, k, m, ctx.torch_device)
            inner = w.setup

            def setup(inner=inner):
                calls["setup"] += 1
                return inner()

            w.setup = setup
            yield w

    yield calls
    unregister_case("test-same-as-baseline")


def test_parse_ms_and_shapes():
    assert parse_ms("1,16, 64") == [1, 16, 64]
    assert parse_ms(None) is None
    assert parse_shapes("4096x4096,8192X28672") == [(4096, 4096), (8192, 28672)]
    for bad in ("0", "a,b", "-1"):
        with pytest.raises(UsageError):
            parse_ms(bad)
    for bad in ("4096", "4096x", "0x5", "4096x4096x2"):
        with pytest.raises(UsageError):
            parse_shapes(bad)


def test_n_copies_exceed_cache():
    assert n_copies(1 << 20, 8 << 20, 1 << 30) == 24  # 3 x 8 MiB / 1 MiB
    assert n_copies(1 << 30, 8 << 20, 1 << 40) == 2  # always at least two
    assert n_copies(1 << 10, 8 << 20, 1 << 40) == harness.MAX_COPIES
    assert n_copies(1 << 30, 8 << 20, 1 << 30) == 1  # memory cap wins


def test_harness_on_cpu_rows_and_self_speedup(same_as_baseline):
    rep = run_bench(["test-same-as-baseline", "linear-fp16"], device="cpu", shapes=[(256, 512)], ms=[1, 4],
                    profile=FAKE_CPU, threads=1, budget_s=0.05)
    assert len(rep.rows) == 4
    base = [r for r in rep.rows if r["case"] == "linear-fp16"]
    same = [r for r in rep.rows if r["case"] == "test-same-as-baseline"]
    assert [r["case"] for r in rep.rows[:2]] == ["linear-fp16"] * 2  # the baseline runs first
    for r in rep.rows:
        assert REQUIRED <= set(r), REQUIRED - set(r)
        assert r["device"] == "cpu" and r["timer"] == "perf_counter" and r["shape"] == "256x512"
        nbytes = 256 * 512 * 2 + r["m"] * 512 * 2 + r["m"] * 256 * 2
        assert r["bytes"] == nbytes and r["flops"] == 2 * r["m"] * 256 * 512
        assert r["gbps"] == pytest.approx(nbytes / (r["time_us"] * 1e-6) / 1e9)
        roof = max(nbytes / 10e9, r["flops"] / 0.1e12)
        assert r["roofline_pct"] == pytest.approx(100 * roof / (r["time_us"] * 1e-6))
        # 256x512 fp16 = 256 KiB per copy: copies exceed 3x the 1 MiB cache
        assert r["copies"] * nbytes >= 3 * (1 << 20)
    assert all(r["speedup"] == 1.0 for r in base)
    assert all(0.25 < r["speedup"] < 4 for r in same)  # same op, same process: ~1 (noisy 2-core machine)
    assert same_as_baseline["setup"] == 2 * same[0]["copies"]  # rotated copies were really built
    assert rep.meta["device"] == "cpu" and rep.meta["threads"] == 1
    assert any("CPU timings" in n for n in rep.notes)
    assert torch.get_num_threads() >= 1


def test_baseline_measured_on_demand_and_int4_rel_err():
    rep = run_bench(["int4-tinygemm"], device="cpu", shapes=[(128, 256)], ms=[2], profile=FAKE_CPU, threads=1,
                    budget_s=0.05)
    if not rep.rows:
        pytest.skip("no CPU int4 kernel: " + "; ".join(rep.notes))
    (r,) = rep.rows
    assert r["dtype"].startswith("int4") and r["rel_err"] < 1e-2
    assert r["speedup"] > 0 and math.isfinite(r["speedup"])
    w = 128 * 256
    assert r["bytes"] == w / 2 + (w / 128) * 4 + 2 * 256 * 2 + 2 * 128 * 2


def test_failing_and_skipping_cases_become_notes():
    @bench_case("test-broken", group="test")
    def broken(ctx):
        yield Workload(8, 16, 1, "fp32", setup=lambda: None, run=lambda st: 1 / 0)

    @bench_case("test-skips", group="test")
    def skips(ctx):
        ctx.skip("needs hardware this test machine lacks")
        yield from ()

    try:
        rep = run_bench(["test-broken", "test-skips"], device="cpu", shapes=[(8, 16)], ms=[1], profile=FAKE_CPU,
                        baseline=False, threads=1, budget_s=0.01)
    finally:
        unregister_case("test-broken")
        unregister_case("test-skips")
    assert rep.rows == []
    assert any("test-broken 8x16 M=1 failed: ZeroDivisionError" in n for n in rep.notes)
    assert any("test-skips skipped: needs hardware" in n for n in rep.notes)


def test_usage_errors():
    with pytest.raises(UsageError):
        run_bench(device="cuda")  # no GPU here
    with pytest.raises(UsageError):
        run_bench(device="tpu")
    with pytest.raises(UsageError):
        run_bench(timer="stopwatch", device="cpu")
    with pytest.raises(UsageError):
        run_bench(device="cpu", cuda_graph=True)
    with pytest.raises(UsageError):
        run_bench(device="cpu", threads=0)


def test_plot(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    rows = [{"case": c, "shape": "8x8", "m": m, "time_us": t, "roofline_pct": p, "device": "cpu",
             "timer": "perf_counter"} for c, m, t, p in [("a", 1, 1.0, 50.0), ("b", 1, 2.0, None), ("a", 4, 3.0, 20.0)]]
    out = plot_rows(rows, str(tmp_path / "p.png"))
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    assert out.endswith("p.png") and [f.name for f in tmp_path.iterdir()] == ["p.png"]
    with pytest.raises(UsageError):
        plot_rows(rows, str(tmp_path / "p.jpg"))
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(UsageError, match="matplotlib"):
        plot_rows(rows, str(tmp_path / "q.png"))
