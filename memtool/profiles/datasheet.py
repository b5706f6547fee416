"""Datasheet numbers for common GPUs (package data ``datasheets/gpus.json``) and matching a detected name to one."""

from __future__ import annotations

import functools
import json
import re
from importlib import resources
from typing import Any


@functools.lru_cache(maxsize=1)
def datasheets() -> tuple[dict[str, Any], ...]:
    """All shipped GPU datasheets (read once)."""
    text = resources.files("memtool.profiles").joinpath("datasheets/gpus.json").read_text()
    return tuple(json.loads(text)["gpus"])


def _normalise(name: str) -> str:
    return " ".join(name.lower().replace("_", " ").split())


def match_gpu(name: str | None, memory_gb: float | None = None) -> dict[str, Any] | None:
    """The datasheet for a GPU name as torch reports it (e.g. "NVIDIA H100 80GB HBM3"), or None.

    Every sheet whose regexes match is a candidate; several candidates (A100 40 vs 80 GB, V100 16 vs 32 GB) are
    resolved by the closest ``memory_gb`` when given, else the first in file order.
    """
    if not name:
        return None
    norm = _normalise(name)
    cands = [d for d in datasheets() if any(re.search(p, norm) for p in d["match"])]
    if not cands:
        return None
    if memory_gb is not None and len(cands) > 1:
        cands.sort(key=lambda d: abs(float(d["memory_gb"]) - float(memory_gb)))
    return dict(cands[0])


def get_datasheet(sheet_id: str) -> dict[str, Any] | None:
    for d in datasheets():
        if d["id"] == sheet_id:
            return dict(d)
    return None
