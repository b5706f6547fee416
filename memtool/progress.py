"""Progress reporting that library code can use without knowing about the CLI.

Library functions take ``progress: Progress | None`` and call ``progress.task(desc, total)`` /
``handle.advance()``; the CLI passes a Rich-backed reporter on a TTY, a plain line-per-step reporter when
stderr is not a TTY (SLURM logs), or the silent default with ``--quiet``.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Iterator, TextIO


class TaskHandle:
    def __init__(self, owner: "Progress", desc: str, total: int | None):
        self.owner, self.desc, self.total, self.done = owner, desc, total, 0

    def advance(self, n: int = 1, info: str = "") -> None:
        self.done += n
        self.owner._update(self, info)


class Progress:
    """Silent reporter; subclasses render."""

    @contextmanager
    def task(self, desc: str, total: int | None = None) -> Iterator[TaskHandle]:
        handle = TaskHandle(self, desc, total)
        self._start(handle)
        try:
            yield handle
        finally:
            self._finish(handle)

    def log(self, msg: str) -> None:
        pass

    def _start(self, h: TaskHandle) -> None:
        pass

    def _update(self, h: TaskHandle, info: str) -> None:
        pass

    def _finish(self, h: TaskHandle) -> None:
        pass


class PlainProgress(Progress):
    """One line per step on a stream (stderr by default); for logs and batch jobs."""

    def __init__(self, stream: TextIO | None = None, min_interval: float = 0.0):
        self.stream = stream or sys.stderr
        self.min_interval = min_interval
        self._last = 0.0

    def _write(self, line: str) -> None:
        print(line, file=self.stream, flush=True)

    def log(self, msg: str) -> None:
        self._write(msg)

    def _start(self, h: TaskHandle) -> None:
        self._t0 = time.perf_counter()
        self._write(f"[start] {h.desc}" + (f" ({h.total} steps)" if h.total else ""))

    def _update(self, h: TaskHandle, info: str) -> None:
        now = time.perf_counter()
        last = h.total is not None and h.done >= h.total
        if not last and now - self._last < self.min_interval:
            return
        self._last = now
        of = f"/{h.total}" if h.total else ""
        self._write(f"[{h.done}{of}] {h.desc}" + (f": {info}" if info else ""))

    def _finish(self, h: TaskHandle) -> None:
        self._write(f"[done] {h.desc} in {time.perf_counter() - self._t0:.1f}s")


class RichProgress(Progress):
    """A live Rich progress bar on stderr (interactive terminals)."""

    def __init__(self):
        from rich.console import Console
        from rich.progress import BarColumn, Progress as RP, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.console = Console(stderr=True)
        self._rp = RP(
            TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
            console=self.console, transient=False,
        )
        self._ids: dict[int, int] = {}
        self._active = 0

    def log(self, msg: str) -> None:
        self.console.print(msg)

    def _start(self, h: TaskHandle) -> None:
        if self._active == 0:
            self._rp.start()
        self._active += 1
        self._ids[id(h)] = self._rp.add_task(h.desc, total=h.total, info="")

    def _update(self, h: TaskHandle, info: str) -> None:
        self._rp.update(self._ids[id(h)], completed=h.done, info=info)

    def _finish(self, h: TaskHandle) -> None:
        self._active -= 1
        if self._active == 0:
            self._rp.stop()


def make_progress(quiet: bool = False, stream: TextIO | None = None) -> Progress:
    stream = stream or sys.stderr
    if quiet:
        return Progress()
    if stream.isatty():
        return RichProgress()
    return PlainProgress(stream, min_interval=2.0)
