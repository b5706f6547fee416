"""Where memtool keeps files between runs."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """memtool's cache: $MEMTOOL_CACHE, else $XDG_CACHE_HOME/memtool, else ~/.cache/memtool."""
    env = os.environ.get("MEMTOOL_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "memtool"
