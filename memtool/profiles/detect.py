"""Detect the machine: CPU (model, cores, ISA flags, last-level cache), RAM, CUDA GPUs and software versions.

Detection is cheap and never measures anything; see :mod:`memtool.profiles.measure` for that. Every field that
cannot be determined is ``None`` rather than an exception, so ``memtool profile`` works on any machine.
"""

from __future__ import annotations

import os
import platform
import re
from importlib import metadata
from pathlib import Path
from typing import Any

# ISA features worth reporting (names as /proc/cpuinfo spells them). x86 first, then Arm ("asimd" is NEON).
_X86_ISA = [
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
    "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "amx_fp16",
]
_ARM_ISA = ["asimd", "asimdhp", "asimddp", "sve", "sve2", "bf16", "i8mm", "sme"]


def _read(path: str | Path) -> str | None:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return None


def parse_cpuinfo(text: str) -> dict[str, Any]:
    """Model name and ISA flags from the text of /proc/cpuinfo (x86 ``flags`` or Arm ``Features``)."""
    model = None
    flags: set[str] = set()
    for line in text.splitlines():
        if ":" not in line:
            continue
        key, _, val = line.partition(":")
        key, val = key.strip().lower(), val.strip()
        if model is None and key in ("model name", "hardware", "cpu model", "processor") and val and not val.isdigit():
            model = val
        elif key in ("flags", "features") and not flags:
            flags = set(val.split())
    isa = [f for f in _X86_ISA if f in flags]
    arm = [f for f in _ARM_ISA if f in flags]
    if "asimd" in arm or "neon" in flags:
        isa.append("neon")
    isa += [f for f in arm if f != "asimd"]
    return {"model": model, "isa": isa, "flags_count": len(flags)}


def _cache_bytes(size: str) -> int | None:
    m = re.fullmatch(r"\s*(\d+)\s*([KMG]?)\s*", size or "")
    if not m:
        return None
    return int(m.group(1)) * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[m.group(2)]


def last_level_cache_bytes() -> int | None:
    """Size of the largest cache level cpu0 sees (per socket/CCX as sysfs reports it), or None."""
    best: tuple[int, int] | None = None
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    for idx in sorted(base.glob("index*")) if base.exists() else []:
        level, size = _read(idx / "level"), _read(idx / "size")
        if level is None or size is None:
            continue
        b = _cache_bytes(size)
        if b and (best is None or int(level) > best[0] or (int(level) == best[0] and b > best[1])):
            best = (int(level), b)
    return best[1] if best else None


def detect_cpu() -> dict[str, Any]:
    import psutil

    info = parse_cpuinfo(_read("/proc/cpuinfo") or "")
    model = info["model"] or platform.processor() or platform.machine() or None
    try:
        import torch

        capability = torch.backends.cpu.get_cpu_capability()
        threads = torch.get_num_threads()
    except Exception:  # noqa: BLE001 - optional facts
        capability, threads = None, None
    return {
        "model": model,
        "arch": platform.machine(),
        "cores_physical": psutil.cpu_count(logical=False),
        "cores_logical": psutil.cpu_count(logical=True),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": threads,
        "isa": info["isa"],
        "torch_cpu_capability": capability,
        "llc_bytes": last_level_cache_bytes(),
    }


def detect_ram() -> dict[str, Any]:
    import psutil

    vm = psutil.virtual_memory()
    return {"total_gb": round(vm.total / 1e9, 2), "available_gb": round(vm.available / 1e9, 2)}


def detect_gpus() -> list[dict[str, Any]]:
    try:
        import torch

        if not torch.cuda.is_available():
            return []
        out = []
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            l2 = getattr(p, "L2_cache_size", None)
            out.append({
                "index": i,
                "name": p.name,
                "memory_gb": round(p.total_memory / 1e9, 2),
                "memory_bytes": int(p.total_memory),
                "sm_count": p.multi_processor_count,
                "compute_capability": f"{p.major}.{p.minor}",
                "l2_bytes": int(l2) if l2 else None,
            })
        return out
    except Exception:  # noqa: BLE001 - a broken driver must not break `memtool profile`
        return []


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def detect_versions() -> dict[str, Any]:
    v: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform()}
    try:
        import torch

        v["torch"] = torch.__version__
        v["cuda"] = torch.version.cuda
        v["hip"] = getattr(torch.version, "hip", None)
        v["cudnn"] = torch.backends.cudnn.version() if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001
        v["torch"] = None
    v["triton"] = _version("triton") or _version("pytorch-triton")
    return v


def detect() -> dict[str, Any]:
    """Everything above in one JSON-able dict: ``{"cpu", "ram", "gpus", "versions"}``."""
    return {"cpu": detect_cpu(), "ram": detect_ram(), "gpus": detect_gpus(), "versions": detect_versions()}
