"""Benchmarks: named cases (:mod:`memtool.bench.registry`), the common runner (:mod:`memtool.bench.harness`)
and the baseline cases (:mod:`memtool.bench.cases_baseline`). ``memtool bench`` is the command line."""

from memtool.bench.harness import BenchReport, parse_ms, parse_shapes, plot_rows, run_bench
from memtool.bench.registry import BenchCase, BenchContext, SkipCase, Workload, all_cases, bench_case, select_cases

__all__ = [
    "BenchCase", "BenchContext", "BenchReport", "SkipCase", "Workload", "all_cases", "bench_case", "parse_ms",
    "parse_shapes", "plot_rows", "run_bench", "select_cases",
]
