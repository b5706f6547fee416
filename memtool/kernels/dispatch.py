"""``lut_matmul(x, w)``: pick a backend from a declared support table.

Each :class:`Backend` declares what it supports (kinds, bits, activation dtypes, devices, M range, group
sizes). :func:`select` walks :data:`BACKENDS` in order and returns the first that fits; the torch
reference (last) fits everything. ``MEMTOOL_KERNEL=ref|triton|cpu`` forces one backend (a forced backend
that cannot take the input raises :class:`memtool.errors.UsageError`). Under ``TRITON_INTERPRET=1`` a
forced ``triton`` also runs on CPU tensors (that is how the tests run the kernel).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from memtool.errors import UsageError
from memtool.kernels.lut_types import KINDS, LutWeight

ENV = "MEMTOOL_KERNEL"
ALL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _triton_group_ok(w: LutWeight) -> bool:
    return w.group_size % 32 == 0 or w.groups == 1


@dataclass(frozen=True)
class Backend:
    name: str
    devices: tuple[str, ...]
    kinds: tuple[str, ...]
    bits: tuple[int, ...]
    dtypes: tuple[torch.dtype, ...]
    min_m: int = 1
    max_m: Optional[int] = None
    group_ok: Callable[[LutWeight], bool] = lambda w: True
    available: Callable[[], bool] = lambda: True
    runner: str = ""  # "module:function", imported lazily

    def supports(self, x: torch.Tensor, w: LutWeight, forced: bool = False) -> Optional[str]:
        """None if this backend can run (x, w); else the reason it cannot."""
        if not self.available():
            return f"{self.name} is not available"
        dev = x.device.type
        if dev not in self.devices and not (forced and self.name == "triton" and _interpreting()):
            return f"{self.name} does not run on {dev}"
        if w.kind not in self.kinds:
            return f"{self.name} does not support kind {w.kind}"
        if w.bits not in self.bits:
            return f"{self.name} does not support {w.bits}-bit codes"
        if x.dtype not in self.dtypes:
            return f"{self.name} does not support {x.dtype} activations"
        m = x.numel() // max(x.shape[-1], 1)
        if m < self.min_m or (self.max_m is not None and m > self.max_m):
            return f"{self.name} does not support M={m}"
        if not self.group_ok(w):
            return f"{self.name} does not support group size {w.group_size} with K={w.in_features}"
        return None

    def run(self, x: torch.Tensor, w: LutWeight) -> torch.Tensor:
        import importlib

        mod, fn = self.runner.split(":")
        return getattr(importlib.import_module(mod), fn)(x, w)


BACKENDS: list[Backend] = [
    Backend(
        "triton",
        devices=("cuda",),
        kinds=KINDS,
        bits=(2, 3, 4, 8),
        dtypes=(torch.float16, torch.bfloat16),
        group_ok=_triton_group_ok,
        available=_triton_available,
        runner="memtool.kernels.lut_triton:lut_matmul_triton",
    ),
    Backend(
        "cpu",
        devices=("cpu",),
        kinds=KINDS,
        bits=(2, 3, 4, 8),
        dtypes=ALL_DTYPES,
        runner="memtool.kernels.lut_cpu:lut_matmul_cpu",
    ),
    Backend(
        "ref",
        devices=("cpu", "cuda", "mps", "xpu"),
        kinds=KINDS,
        bits=(2, 3, 4, 8),
        dtypes=ALL_DTYPES,
        runner="memtool.kernels.lut_ref:lut_matmul_ref",
    ),
]


def select(x: torch.Tensor, w: LutWeight, force: Optional[str] = None) -> Backend:
    """The backend ``lut_matmul`` would use (``force`` or ``$MEMTOOL_KERNEL`` overrides the table)."""
    force = force or os.environ.get(ENV) or None
    if force:
        by_name = {b.name: b for b in BACKENDS}
        if force not in by_name:
            raise UsageError(f"unknown {ENV}={force!r}: expected one of {', '.join(by_name)}")
        b = by_name[force]
        why = b.supports(x, w, forced=True)
        if why is not None:
            raise UsageError(f"{ENV}={force}: {why}")
        return b
    for b in BACKENDS:
        if b.supports(x, w) is None:
            return b
    raise UsageError(f"no LUT kernel backend supports this input ({x.dtype} on {x.device.type})")


def lut_matmul(x: torch.Tensor, w: LutWeight, force: Optional[str] = None) -> torch.Tensor:
    """y = x @ W^T: x [..., K] (fp16/bf16/fp32) -> [..., N] in x.dtype, accumulated in fp32."""
    if x.shape[-1] != w.in_features:
        raise UsageError(f"input has {x.shape[-1]} features, the LUT weight expects {w.in_features}")
    return select(x, w, force).run(x, w)
