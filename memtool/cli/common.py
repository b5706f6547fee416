"""Conventions shared by every command: output (markdown | --json), progress, errors -> exit codes.

A command module defines ``def register(app)`` that adds one Typer command. The command body parses its flags,
calls one library function and returns a :class:`Result` through :func:`run`, which renders it and maps
errors to the documented exit codes (memtool.errors).
"""

from __future__ import annotations

import json
import math
import sys
import traceback
from dataclasses import dataclass, field
from typing import Annotated, Any, Callable

import typer

from memtool.errors import EXIT_RESOURCE, EXIT_RUNTIME, EXIT_USAGE, MemtoolError
from memtool.progress import Progress, make_progress

JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout (for scripts).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress output on stderr.")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")]
AllowPickleOpt = Annotated[bool, typer.Option("--allow-pickle", help="Allow pickle (.bin/.pt) checkpoints.")]
TrustRemoteCodeOpt = Annotated[bool, typer.Option("--trust-remote-code", help="Run the model repo's own code.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:1 ...")]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="float32 | bfloat16 | float16 (dense weights and activations)")]


@dataclass
class Result:
    """What a command prints: a title, key/value facts and a table of rows."""

    title: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"title": self.title, **self.meta, "rows": self.rows, "notes": self.notes}


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            return str(v)
        a = abs(v)
        if a != 0 and (a >= 1e5 or a < 1e-3):
            return f"{v:.3e}"
        return f"{v:.4g}" if a < 10 else f"{v:.2f}" if a < 1000 else f"{v:.0f}"
    if isinstance(v, (list, tuple)):
        return ", ".join(_fmt(x) for x in v)
    if isinstance(v, dict):
        return json.dumps(v, default=str)
    return "" if v is None else str(v)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    cols: list[str] = []
    for r in rows:
        cols += [c for c in r if c not in cols]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c)).replace("|", "\\|") for c in cols) + " |")
    return "\n".join(lines)


def render(result: Result, as_json: bool) -> str:
    if as_json:
        return json.dumps(result.to_json(), indent=2, default=str)
    out = [f"## {result.title}"]
    if result.meta:
        out.append("")
        out += [f"- {k}: {_fmt(v)}" for k, v in result.meta.items()]
    if result.rows:
        out += ["", markdown_table(result.rows)]
    if result.notes:
        out.append("")
        out += [f"> {n}" for n in result.notes]
    return "\n".join(out)


def _error_line(msg: str) -> str:
    return "error: " + " ".join(str(msg).split())  # always one line


def run(
    fn: Callable[[Progress], Result | None],
    *,
    json_: bool = False,
    quiet: bool = False,
    debug: bool = False,
    csv: bool = False,
) -> None:
    """Run a command body with the shared conventions and exit with the documented code."""
    progress = make_progress(quiet)
    try:
        result = fn(progress)
    except typer.Exit:
        raise
    except MemtoolError as e:
        _fail(e, e.exit_code, debug)
    except MemoryError as e:
        _fail(f"out of host memory: {e}", EXIT_RESOURCE, debug, exc=e)
    except KeyboardInterrupt:
        print(_error_line("interrupted"), file=sys.stderr)
        raise typer.Exit(130)
    except Exception as e:  # noqa: BLE001 - the one place that turns surprises into a one-line error
        name = type(e).__name__
        if "OutOfMemoryError" in name or "out of memory" in str(e).lower():
            _fail(f"out of GPU memory: {str(e).splitlines()[0] if str(e) else name}", EXIT_RESOURCE, debug, exc=e)
        _fail(f"{name}: {e}", EXIT_RUNTIME, debug, exc=e)
    if result is not None:
        if csv:
            print(to_csv(result.rows), end="")
        else:
            print(render(result, json_))


def to_csv(rows: list[dict[str, Any]]) -> str:
    import csv as _csv
    import io

    cols: list[str] = []
    for r in rows:
        cols += [c for c in r if c not in cols]
    buf = io.StringIO()
    w = _csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    for r in rows:
        w.writerow(r)
    return buf.getvalue()


def _fail(err: Any, code: int, debug: bool, exc: BaseException | None = None) -> None:
    if debug:
        traceback.print_exc(file=sys.stderr)
    print(_error_line(str(err)), file=sys.stderr)
    raise typer.Exit(code)


def usage(msg: str) -> None:
    """Raise a usage error (exit 2) from argument checks inside a command body."""
    from memtool.errors import UsageError

    raise UsageError(msg)


__all__ = ["Result", "run", "render", "usage", "JsonOpt", "QuietOpt", "DebugOpt", "AllowPickleOpt",
           "TrustRemoteCodeOpt", "DeviceOpt", "DtypeOpt", "EXIT_USAGE"]
