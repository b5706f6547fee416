"""`memtool quantize MODEL --bits B -o OUT`: group-wise LUT quantization into a packed artifact."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from memtool.cli.common import DebugOpt, JsonOpt, QuietOpt, Result, run


def register(app: typer.Typer) -> None:
    @app.command("quantize")
    def quantize_cmd(
        model: Annotated[str, typer.Argument(help="Local HF dir, .gguf file, hub id, or 'default'.")],
        out: Annotated[str, typer.Option("-o", "--out", help="Output artifact directory.")],
        bits: Annotated[int, typer.Option(help="Bits per weight code: 2, 3, 4 or 8.")] = 4,
        group_size: Annotated[int, typer.Option(help="Input channels per group: 32, 64, 128, 256, -1 (per-channel).")] = 128,
        method: Annotated[str, typer.Option(help="Table type: uniform | bcq | nf.")] = "uniform",
        calib_method: Annotated[str, typer.Option(help="rtn (round to nearest, streaming) | gptq (calibrated).")] = "rtn",
        calib: Annotated[str, typer.Option(help="Calibration text for gptq: builtin | FILE | wikitext2.")] = "builtin",
        n_calib: Annotated[int, typer.Option(help="Calibration sequences (gptq).")] = 128,
        calib_len: Annotated[int, typer.Option(help="Tokens per calibration sequence (gptq).")] = 512,
        skip: Annotated[Optional[list[str]], typer.Option(help="Keep matching layers dense (glob, or substring).")] = None,
        override: Annotated[Optional[list[str]], typer.Option(
            help="Per-layer settings PATTERN=bits[:group_size[:method]], e.g. 'down_proj=4:128:nf'.")] = None,
        seed: Annotated[int, typer.Option(help="Random seed (calibration sampling).")] = 0,
        device: Annotated[str, typer.Option(help="Where the quantization math runs: cpu | cuda[:N].")] = "cpu",
        dense_dtype: Annotated[str, typer.Option(
            help="Dense tensors: auto (fp32 -> fp16/bf16) | keep | float16 | bfloat16 | float32.")] = "auto",
        max_shard_size: Annotated[str, typer.Option(help="Largest output shard, e.g. 2GB, 500MB.")] = "2GB",
        overwrite: Annotated[bool, typer.Option(help="Replace OUT if it exists (atomically).")] = False,
        allow_pickle: Annotated[bool, typer.Option(help="Allow pickle checkpoints (refused: quantize streams safetensors).")] = False,
        json_: JsonOpt = False, quiet: QuietOpt = False, debug: DebugOpt = False,
    ) -> None:
        """Quantize the linear layers of MODEL to q-bit LUT codes; embeddings and lm_head stay 16-bit."""

        def body(progress):
            import sys

            from memtool.compress.artifact import parse_size
            from memtool.compress.quantize import QuantizeSpec, parse_override, quantize_model

            spec = QuantizeSpec(bits=bits, group_size=group_size, method=method, calib_method=calib_method,
                                calib=calib, n_calib=n_calib, calib_len=calib_len, skip=list(skip or []),
                                overrides=[parse_override(o) for o in (override or [])], seed=seed, device=device,
                                dense_dtype=dense_dtype, max_shard_bytes=parse_size(max_shard_size))
            res = quantize_model(model, out, spec, overwrite=overwrite, progress=progress,
                                 command=["memtool"] + sys.argv[1:], allow_pickle=allow_pickle)
            tot = res["totals"]
            meta = {"model": model, "out": tot["out"], "bits": bits, "group_size": group_size, "method": method,
                    "calib_method": calib_method, **{k: v for k, v in tot.items() if k != "out"}}
            rows = [{"layer": r["name"], "format": r["format"], "shape": "x".join(map(str, r["shape"])),
                     "bits": r["bits_per_weight"], "bytes_before": r["bytes_before"], "bytes_after": r["bytes_after"],
                     **({"rel_error": r["rel_error"]} if "rel_error" in r else {}),
                     **({"output_rel_error": r["output_rel_error"]} if "output_rel_error" in r else {})}
                    for r in res["layers"] if r["format"] != "dense"]
            return Result("memtool quantize", rows=rows, meta=meta,
                          notes=["rel_error: ||W - Wq||_F / ||W||_F; output_rel_error (gptq): ||X(W - Wq)^T||^2 / "
                                 "||XW^T||^2 on the calibration inputs"])

        run(body, json_=json_, quiet=quiet, debug=debug)
