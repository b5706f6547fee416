"""`memtool profile [--measure] [--save/--no-save]`: detect (and measure) the machine; save measured profiles."""

from __future__ import annotations

from typing import Annotated

import typer

from memtool.cli.common import DebugOpt, JsonOpt, QuietOpt, Result, run


def register(app: typer.Typer) -> None:
    @app.command("profile")
    def profile_cmd(
        measure: Annotated[bool, typer.Option("--measure", help="Measure bandwidths, matmul peak and CPU AdamW "
                                              "throughput (about a minute on a GPU).")] = False,
        save: Annotated[bool, typer.Option("--save/--no-save", help="Save a measured profile to the cache "
                                           "($MEMTOOL_CACHE or ~/.cache/memtool)/profiles for other commands.")] = True,
        quick: Annotated[bool, typer.Option("--quick", help="Smaller measurement sizes (fast, less accurate).")] = False,
        device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
        json_: JsonOpt = False, quiet: QuietOpt = False, debug: DebugOpt = False,
    ) -> None:
        """Report CPU, RAM, GPUs and versions; with --measure, measured bandwidths and peaks (saved by default)."""

        def body(progress):
            from memtool.profiles import profile_report, profile_rows

            res = profile_report(device=None if device == "auto" else device, measure=measure, quick=quick,
                                 save=save, progress=progress)
            p = res["profile"]
            if json_:
                meta = {"profile": p.to_json(), "saved_to": res["saved_to"], "detected": res["report"]["detected"],
                        "measured": res["report"]["measured"], "created": res["report"]["created"]}
                return Result("memtool profile", meta=meta, notes=res["notes"])
            meta = {"profile": f"{p.source} ({p.key})"}
            if res["saved_to"]:
                meta["saved_to"] = res["saved_to"]
            return Result("memtool profile", rows=profile_rows(res), meta=meta, notes=res["notes"])

        run(body, json_=json_, quiet=quiet, debug=debug)
