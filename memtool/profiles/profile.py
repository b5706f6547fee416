"""A :class:`Profile`: the few numbers the cost model needs for one device, with where each came from.

Built from a detection report, optionally a measurement and the matching datasheet. Precedence for every number:
measured > datasheet > unknown (None). ``source`` says which tier the profile as a whole came from.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from memtool.profiles.datasheet import match_gpu


@dataclass
class Profile:
    key: str
    source: str  # "measured" | "datasheet" | "detected"
    device: str  # "cuda:0", "cpu"
    device_name: str | None = None
    mem_bw_gbs: float | None = None  # memory bandwidth used for rooflines, GB/s (1e9 B/s)
    mem_bw_source: str | None = None
    peak_tflops: float | None = None  # fp16/bf16 dense (GPU) or best CPU matmul, TFLOP/s
    peak_source: str | None = None
    h2d_gbs: float | None = None  # pinned host -> device
    d2h_gbs: float | None = None  # pinned device -> host
    bidir_gbs: float | None = None  # both directions at once, total
    h2d_pageable_gbs: float | None = None
    d2h_pageable_gbs: float | None = None
    transfer_source: str | None = None
    cache_bytes: int | None = None  # L2 (GPU) or last-level cache (CPU): rotated bench inputs must exceed it
    memory_gb: float | None = None
    sm_count: int | None = None
    cpu_adam_params_per_s: float | None = None
    datasheet_id: str | None = None
    created: str | None = None
    path: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def is_gpu(self) -> bool:
        return self.device.startswith("cuda")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def slug(text: str | None) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", (text or "unknown").lower()).strip("-")
    return s or "unknown"


def _gpu_index(device: str) -> int:
    _, _, idx = device.partition(":")
    return int(idx) if idx.isdigit() else 0


def profile_key(detected: dict[str, Any], device: str) -> str:
    if device.startswith("cuda"):
        gpus = detected.get("gpus") or []
        i = _gpu_index(device)
        name = gpus[i]["name"] if i < len(gpus) else None
        return "gpu-" + slug(name)
    return "cpu-" + slug((detected.get("cpu") or {}).get("model"))


def _first(*vals: Any) -> Any:
    return next((v for v in vals if v is not None), None)


def build_profile(
    detected: dict[str, Any],
    device: str,
    measured: dict[str, Any] | None = None,
    *,
    created: str | None = None,
    path: str | None = None,
) -> Profile:
    """Combine detection, an optional measurement and the datasheet into a :class:`Profile` for ``device``."""
    measured = measured or {}
    cpu_m = measured.get("cpu") or {}
    adam = [v for v in (cpu_m.get("adamw_fused_params_per_s"), cpu_m.get("adamw_foreach_params_per_s")) if v]
    p = Profile(key=profile_key(detected, device), source="detected", device=device, created=created, path=path,
                cpu_adam_params_per_s=max(adam) if adam else None)
    if device.startswith("cuda"):
        gpus = detected.get("gpus") or []
        i = _gpu_index(device)
        gpu = gpus[i] if i < len(gpus) else {}
        gm = measured.get("gpu") or {}
        sheet = match_gpu(gpu.get("name"), gpu.get("memory_gb"))
        p.device_name, p.memory_gb, p.sm_count = gpu.get("name"), gpu.get("memory_gb"), gpu.get("sm_count")
        p.cache_bytes = _first(gpu.get("l2_bytes"), int(sheet["l2_mb"] * (1 << 20)) if sheet else None)
        if sheet:
            p.datasheet_id = sheet["id"]
            p.source = "datasheet"
            p.mem_bw_gbs, p.mem_bw_source = float(sheet["hbm_gbs"]), f"datasheet {sheet['name']}"
            peak = _first(sheet.get("bf16_tflops"), sheet.get("fp16_tflops"))
            p.peak_tflops, p.peak_source = (float(peak), f"datasheet {sheet['name']} dense") if peak else (None, None)
            p.h2d_gbs = p.d2h_gbs = float(sheet["pcie_gbs"])
            p.bidir_gbs = 2 * float(sheet["pcie_gbs"])
            p.transfer_source = f"datasheet PCIe gen{sheet['pcie_gen']} x16 (theoretical)"
        if gm:
            p.source = "measured"
            if gm.get("d2d_copy_gbs"):
                p.mem_bw_gbs, p.mem_bw_source = gm["d2d_copy_gbs"], "measured device copy (read + write)"
            mm = [v for v in (gm.get("matmul_bf16_tflops"), gm.get("matmul_fp16_tflops")) if v]
            if mm:
                p.peak_tflops, p.peak_source = max(mm), f"measured {gm.get('matmul_n')}^3 bf16/fp16 matmul"
            if gm.get("h2d_pinned_gbs"):
                p.h2d_gbs, p.d2h_gbs = gm["h2d_pinned_gbs"], gm.get("d2h_pinned_gbs")
                p.bidir_gbs = gm.get("bidir_pinned_gbs")
                p.transfer_source = "measured pinned copies"
            p.h2d_pageable_gbs, p.d2h_pageable_gbs = gm.get("h2d_pageable_gbs"), gm.get("d2h_pageable_gbs")
        if not sheet and not gm:
            p.notes.append(f"no datasheet for GPU {gpu.get('name')!r} and no measured profile: "
                           "run `memtool profile --measure` for rooflines")
    else:
        cpu = detected.get("cpu") or {}
        p.device_name = cpu.get("model")
        p.cache_bytes = cpu.get("llc_bytes")
        p.memory_gb = (detected.get("ram") or {}).get("total_gb")
        if cpu_m:
            p.source = "measured"
            if cpu_m.get("copy_gbs"):
                p.mem_bw_gbs, p.mem_bw_source = cpu_m["copy_gbs"], "measured memory copy (read + write)"
            mm = [v for v in (cpu_m.get("matmul_fp32_gflops"), cpu_m.get("matmul_bf16_gflops")) if v]
            if mm:
                p.peak_tflops, p.peak_source = max(mm) / 1e3, f"measured {cpu_m.get('matmul_n')}^3 fp32/bf16 matmul"
        else:
            p.notes.append("CPU bandwidth and peak unknown: run `memtool profile --measure` for CPU rooflines")
    return p
