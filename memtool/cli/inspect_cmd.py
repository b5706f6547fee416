"""`memtool inspect PATH`: per-layer formats, shapes, bits and sizes of an artifact (or a plain checkpoint)."""

from __future__ import annotations

from typing import Annotated

import typer

from memtool.cli.common import DebugOpt, JsonOpt, QuietOpt, Result, run


def register(app: typer.Typer) -> None:
    @app.command("inspect")
    def inspect_cmd(
        path: Annotated[str, typer.Argument(help="A memtool artifact or a plain HF safetensors directory.")],
        json_: JsonOpt = False, quiet: QuietOpt = False, debug: DebugOpt = False,
    ) -> None:
        """Per-layer formats, shapes, bits per weight and sizes; overall compression ratio."""

        def body(progress):
            from memtool.compress.artifact import summarize

            info = summarize(path)
            s = info["summary"]
            notes = []
            if not s["artifact"]:
                notes.append("not a memtool artifact: every tensor is dense")
            notes.append("bytes_before counts every weight at 16 bits (the fp16/bf16 checkpoint); bits include "
                         "per-group parameters and the packed layout's row padding")
            return Result(f"memtool inspect {path}", rows=info["rows"], meta=s, notes=notes)

        run(body, json_=json_, quiet=quiet, debug=debug)
