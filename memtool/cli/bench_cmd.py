"""`memtool bench [--case ...] [--json|--csv] [--plot f.png]`: run named benchmark cases with the common harness."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from memtool.cli.common import DebugOpt, JsonOpt, QuietOpt, Result, run


def _split(values: Optional[list[str]]) -> Optional[list[str]]:
    out = [v.strip() for item in values or [] for v in item.split(",") if v.strip()]
    return out or None


def register(app: typer.Typer) -> None:
    @app.command("bench")
    def bench_cmd(
        case: Annotated[Optional[list[str]], typer.Option("--case", "-c", help="Case name(s), repeatable or "
                                                          "comma-separated [all]; see --list.")] = None,
        group: Annotated[Optional[list[str]], typer.Option("--group", help="Only cases of these groups.")] = None,
        m: Annotated[Optional[str], typer.Option("--m", help="M (tokens) values, e.g. 1,16,64.")] = None,
        shapes: Annotated[Optional[str], typer.Option("--shapes", help="N x K (out x in) list, e.g. "
                                                      "4096x4096,8192x28672.")] = None,
        quick: Annotated[bool, typer.Option("--quick", help="Small shapes and short timings (CPU smoke run).")] = False,
        device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
        timer: Annotated[str, typer.Option(help="GPU timer: auto (events with --cuda-graph, else do_bench), "
                                                    "do_bench, events.")] = "auto",
        cuda_graph: Annotated[bool, typer.Option("--cuda-graph", help="Time CUDA-graph replays (no launch "
                                                 "overhead).")] = False,
        baseline: Annotated[bool, typer.Option("--baseline/--no-baseline", help="Speedup vs the fp16 linear "
                                               "of the same shape, measured in this process.")] = True,
        threads: Annotated[Optional[int], typer.Option("--threads", help="torch CPU threads for the run "
                                                       "[torch default].")] = None,
        list_: Annotated[bool, typer.Option("--list", help="List the registered cases and exit.")] = False,
        plot: Annotated[Optional[str], typer.Option("--plot", help="Also write a PNG chart (needs matplotlib).")] = None,
        csv: Annotated[bool, typer.Option("--csv", help="Print the rows as CSV on stdout.")] = False,
        json_: JsonOpt = False, quiet: QuietOpt = False, debug: DebugOpt = False,
    ) -> None:
        """Time benchmark cases: time, effective GB/s, % of roofline (hardware profile), speedup vs fp16 linear."""

        def body(progress):
            from memtool.errors import UsageError

            if json_ and csv:
                raise UsageError("give either --json or --csv, not both")
            if list_:
                from memtool.bench.registry import all_cases, load_case_modules

                rows = [{"case": c.name, "group": c.group, "module": c.module, "description": c.description}
                        for c in all_cases().values()]
                return Result("memtool bench cases", rows=rows, notes=load_case_modules())
            from memtool.bench.harness import parse_ms, parse_shapes, plot_rows, run_bench

            rep = run_bench(_split(case), groups=_split(group), device=device, ms=parse_ms(m),
                            shapes=parse_shapes(shapes), quick=quick, timer=timer, cuda_graph=cuda_graph,
                            baseline=baseline, threads=threads, progress=progress)
            meta = dict(rep.meta)
            if plot:
                meta["plot"] = plot_rows(rep.rows, plot)
            rows = rep.rows
            if not (json_ or csv):  # the markdown table keeps the columns a reader compares
                drop = {"device", "timer", "n", "k", "bytes", "flops"}
                rows = [{c: v for c, v in r.items() if c not in drop} for r in rows]
                meta = {k: v for k, v in meta.items() if v is not None}
            return Result("memtool bench", rows=rows, meta=meta, notes=list(rep.notes))

        run(body, json_=json_, quiet=quiet, debug=debug, csv=csv)
