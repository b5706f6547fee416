"""Saved (measured) profiles and :func:`current_profile`, the one call other commands use.

A saved profile is the JSON report of ``memtool profile --measure`` (detection + measurement), stored under
``<cache>/profiles/<key>.json`` where ``<cache>`` is $MEMTOOL_CACHE, else $XDG_CACHE_HOME/memtool, else
~/.cache/memtool, and ``<key>`` names the device (``gpu-nvidia-h100-80gb-hbm3``, ``cpu-amd-epyc``). A report
from a GPU machine is saved under both its GPU key and its CPU key. Writes are atomic (temp file + os.replace).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from memtool.paths import cache_dir as cache_root
from memtool.profiles.profile import Profile, build_profile, profile_key

SCHEMA = 1


def profiles_dir() -> Path:
    return cache_root() / "profiles"


def make_report(detected: dict[str, Any], measured: dict[str, Any] | None, device: str) -> dict[str, Any]:
    from memtool import __version__

    return {
        "schema": SCHEMA,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "memtool_version": __version__,
        "device": device,
        "detected": detected,
        "measured": measured,
    }


def _atomic_write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_report(report: dict[str, Any], directory: Path | None = None) -> list[Path]:
    """Save a measured report under each device key it covers; returns the written paths."""
    directory = Path(directory) if directory else profiles_dir()
    measured = report.get("measured") or {}
    keys = []
    if measured.get("gpu"):
        keys.append(profile_key(report["detected"], report.get("device") or "cuda:0"))
    if measured.get("cpu"):
        keys.append(profile_key(report["detected"], "cpu"))
    paths = []
    for key in keys:
        path = directory / f"{key}.json"
        _atomic_write_json(path, report)
        paths.append(path)
    return paths


def load_report(key: str, directory: Path | None = None) -> dict[str, Any] | None:
    """The saved report for ``key``, or None when there is none. A corrupt file raises ValueError."""
    path = (Path(directory) if directory else profiles_dir()) / f"{key}.json"
    if not path.is_file():
        return None
    try:
        report = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"unreadable saved profile {path}: {e}") from e
    if not isinstance(report, dict) or report.get("schema") != SCHEMA or "detected" not in report:
        raise ValueError(f"saved profile {path} has an unknown format")
    report["_path"] = str(path)
    return report


def default_device() -> str:
    try:
        import torch

        return "cuda:0" if torch.cuda.is_available() else "cpu"
    except Exception:  # noqa: BLE001
        return "cpu"


def current_profile(
    device: str | None = None,
    *,
    use_saved: bool = True,
    directory: Path | None = None,
    detected: dict[str, Any] | None = None,
) -> Profile:
    """The best profile for ``device`` (default: cuda:0 if present, else cpu): measured > datasheet > detected."""
    from memtool.profiles.detect import detect

    device = device or default_device()
    if device == "cuda":
        device = "cuda:0"
    detected = detected or detect()
    key = profile_key(detected, device)
    notes: list[str] = []
    if use_saved:
        try:
            report = load_report(key, directory)
        except ValueError as e:
            report = None
            notes.append(f"ignored {e}")
        if report is not None:
            measured = report.get("measured") or {}
            part = measured.get("gpu") if device.startswith("cuda") else measured.get("cpu")
            if part:
                # current detection (same device key) + the saved measurement
                p = build_profile(detected, device, measured, created=report.get("created"), path=report["_path"])
                p.notes = notes + p.notes
                return p
    p = build_profile(detected, device, None)
    p.notes = notes + p.notes
    return p
