"""`memtool convert ARTIFACT --to gptq -o OUT`: export a uniform artifact to the GPTQ checkpoint format."""

from __future__ import annotations

from typing import Annotated

import typer

from memtool.cli.common import DebugOpt, JsonOpt, QuietOpt, Result, run


def register(app: typer.Typer) -> None:
    @app.command("convert")
    def convert_cmd(
        artifact: Annotated[str, typer.Argument(help="A memtool artifact quantized with --method uniform.")],
        out: Annotated[str, typer.Option("-o", "--out", help="Output checkpoint directory.")],
        to: Annotated[str, typer.Option("--to", help="Target format: gptq.")] = "gptq",
        gptq_format: Annotated[str, typer.Option(
            help="gptq (v1: zeros stored minus one; transformers/optimum/vLLM) | gptq_v2 (GPTQModel).")] = "gptq",
        overwrite: Annotated[bool, typer.Option(help="Replace OUT if it exists (atomically).")] = False,
        json_: JsonOpt = False, quiet: QuietOpt = False, debug: DebugOpt = False,
    ) -> None:
        """Lossless export: same codes, fp16 scales and integer zeros (refuses BCQ/NF and ragged groups)."""

        def body(progress):
            import sys

            from memtool.errors import UsageError

            if to != "gptq":
                raise UsageError(f"unknown target format {to!r} (supported: gptq)")
            from memtool.compress.gptq_export import convert_to_gptq

            res = convert_to_gptq(artifact, out, overwrite=overwrite, checkpoint_format=gptq_format,
                                  progress=progress, command=["memtool"] + sys.argv[1:])
            return Result("memtool convert", rows=[{"artifact": artifact, **res}],
                          notes=["max_abs_diff_vs_artifact: GPTQ scale*(code-zero) vs the artifact's scale*code+bias "
                                 "(differs only by the fp16 rounding of the stored bias)"])

        run(body, json_=json_, quiet=quiet, debug=debug)
