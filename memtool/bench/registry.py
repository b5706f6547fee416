"""Named benchmark cases.

A case is a generator function registered with :func:`bench_case`. It receives a :class:`BenchContext` and yields
one :class:`Workload` per point of its parameter grid (``ctx.grid()`` gives the (N, K, M) points the user asked
for). The harness builds several copies of each workload's inputs, times it, and turns it into a row. Adding a
case file::

    # memtool/bench/cases_mything.py
    from memtool.bench.registry import Workload, bench_case

    @bench_case("mything-4bit", group="mything", description="...")
    def mything(ctx):
        if ctx.device != "cuda":
            ctx.skip("needs a GPU")
        for n, k, m in ctx.grid():
            yield Workload(n, k, m, dtype="4-bit g128", weight_bits=4, group_size=128,
                           setup=lambda n=n, k=k, m=m: make_inputs(n, k, m, ctx.torch_device),
                           run=lambda st: my_kernel(*st))

and append ``"memtool.bench.cases_mything"`` to :data:`CASE_MODULES`. Modules are imported lazily, the first time
cases are listed; a module that is not installed is skipped, one that fails to import is reported as a note.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

from memtool.errors import UsageError

# Case modules, imported on first use. Missing ones (ModuleNotFoundError for that very module) are skipped.
CASE_MODULES = [
    "memtool.bench.cases_baseline",
    "memtool.bench.cases_lut",
]

BASELINE_CASE = "linear-fp16"


class SkipCase(Exception):
    """Raised (via ``ctx.skip``) by a case that cannot run here; the harness records the reason as a note."""


@dataclass
class Workload:
    """One point of a case's grid: what to build, what to time, and what it moves/computes.

    ``setup()`` builds one copy of the inputs (weights + activations) on the bench device and returns any state;
    ``run(state)`` is the timed operation. ``bytes``/``flops`` default to the ideal GEMM traffic from
    :func:`memtool.profiles.cost.gemm_bytes` with the fields below. ``check(state)`` optionally returns the
    relative error of the output against a reference (run once, reported as ``rel_err``).
    """

    n: int
    k: int
    m: int
    dtype: str
    setup: Callable[[], Any]
    run: Callable[[Any], Any]
    weight_bits: float = 16
    group_size: int | None = None
    scale_bits: float = 16
    zero_bits: float = 0
    act_bytes: float = 2
    out_bytes: float | None = None
    bytes: float | None = None
    flops: float | None = None
    check: Callable[[Any], float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def traffic(self) -> tuple[float, float]:
        from memtool.profiles.cost import gemm_bytes

        nbytes = self.bytes if self.bytes is not None else gemm_bytes(
            self.m, self.n, self.k, self.weight_bits, self.group_size, self.act_bytes,
            scale_bits=self.scale_bits, zero_bits=self.zero_bits, out_bytes=self.out_bytes)
        flops = self.flops if self.flops is not None else 2.0 * self.m * self.n * self.k
        return nbytes, flops


@dataclass
class BenchContext:
    """What a case sees: the device ("cuda" or "cpu"), the requested grid and whether this is a quick run."""

    device: str
    shapes: list[tuple[int, int]]
    ms: list[int]
    quick: bool = False
    torch_device: str = "cpu"
    notes: list[str] = field(default_factory=list)

    def grid(self) -> list[tuple[int, int, int]]:
        """(N, K, M) points: every shape (N = out, K = in) at every M."""
        return [(n, k, m) for n, k in self.shapes for m in self.ms]

    def skip(self, reason: str) -> None:
        raise SkipCase(reason)

    def note(self, msg: str) -> None:
        if msg not in self.notes:
            self.notes.append(msg)


@dataclass
class BenchCase:
    name: str
    group: str
    fn: Callable[[BenchContext], Iterable[Workload]]
    description: str = ""
    module: str = ""

    def workloads(self, ctx: BenchContext) -> Iterator[Workload]:
        yield from self.fn(ctx)


_REGISTRY: dict[str, BenchCase] = {}
_LOADED = False
_LOAD_NOTES: list[str] = []


def bench_case(name: str, group: str = "misc", description: str = "") -> Callable:
    """Register a case generator under ``name`` (unique) in ``group``."""

    def deco(fn: Callable[[BenchContext], Iterable[Workload]]) -> Callable[[BenchContext], Iterable[Workload]]:
        old = _REGISTRY.get(name)
        if old is not None and (old.module, old.fn.__qualname__) != (fn.__module__, fn.__qualname__):
            raise ValueError(f"bench case {name!r} is already registered by {old.module}")
        doc = description or ((fn.__doc__ or "").strip().splitlines() or [""])[0]
        _REGISTRY[name] = BenchCase(name, group, fn, doc, fn.__module__)
        return fn

    return deco


def unregister_case(name: str) -> None:
    """Remove a case (tests register temporary ones)."""
    _REGISTRY.pop(name, None)


def load_case_modules(modules: list[str] | None = None) -> list[str]:
    """Import the case modules once; returns notes about modules that failed to import."""
    global _LOADED
    if _LOADED and modules is None:
        return list(_LOAD_NOTES)
    for mod in modules or CASE_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name == mod:
                continue  # not written / not installed: skipped silently
            _LOAD_NOTES.append(f"bench cases in {mod} not loaded: {e}")
        except Exception as e:  # noqa: BLE001 - a broken case file must not break the other cases
            _LOAD_NOTES.append(f"bench cases in {mod} not loaded: {type(e).__name__}: {e}")
    if modules is None:
        _LOADED = True
    return list(_LOAD_NOTES)


def all_cases() -> dict[str, BenchCase]:
    load_case_modules()
    return dict(_REGISTRY)


def get_case(name: str) -> BenchCase:
    cases = all_cases()
    if name not in cases:
        raise UsageError(f"unknown bench case {name!r}; known: {', '.join(sorted(cases)) or 'none'}")
    return cases[name]


def select_cases(names: list[str] | None = None, groups: list[str] | None = None) -> list[BenchCase]:
    """Cases by name and/or group (registration order); no filter = all cases."""
    cases = all_cases()
    if names:
        sel = [get_case(n) for n in names]
    else:
        sel = list(cases.values())
    if groups:
        known = {c.group for c in cases.values()}
        bad = [g for g in groups if g not in known]
        if bad:
            raise UsageError(f"unknown bench group {bad[0]!r}; known: {', '.join(sorted(known))}")
        sel = [c for c in sel if c.group in groups]
    return sel
