"""`memtool eval MODEL [--compare BASE]`: perplexity (and KL / top-1 agreement against a base)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from memtool.cli.common import (AllowPickleOpt, DebugOpt, DeviceOpt, DtypeOpt, JsonOpt, QuietOpt, Result,
                                TrustRemoteCodeOpt, run)


def register(app: typer.Typer) -> None:
    @app.command("eval")
    def eval_cmd(
        model: Annotated[str, typer.Argument(help="Local HF dir, .gguf file, hub id, memtool artifact, or 'default'.")],
        compare: Annotated[Optional[str], typer.Option(help="Base model: also report KL and top-1 agreement.")] = None,
        data: Annotated[Optional[str], typer.Option(help="A UTF-8 text file to evaluate on.")] = None,
        dataset: Annotated[Optional[str], typer.Option(help="'wikitext2' (needs `datasets`, cached or online).")] = None,
        seq_len: Annotated[Optional[int], typer.Option(help="Tokens per window [512; 2048 for wikitext2].")] = None,
        stride: Annotated[Optional[int], typer.Option(help="Window stride [= seq-len: non-overlapping].")] = None,
        windows: Annotated[Optional[int], typer.Option(help="Number of windows [40; all for wikitext2].")] = None,
        device: DeviceOpt = "cpu",
        dtype: DtypeOpt = "float32",
        allow_pickle: AllowPickleOpt = False,
        trust_remote_code: TrustRemoteCodeOpt = False,
        json_: JsonOpt = False, quiet: QuietOpt = False, debug: DebugOpt = False,
    ) -> None:
        """Perplexity on a recorded protocol; with --compare, mean KL and top-1 agreement vs the base."""

        def body(progress):
            from memtool.errors import UsageError
            from memtool.models import load_model, load_tokenizer, parse_dtype, resolve
            from memtool.models.corpus import corpus_name, load_text, text_sha256, token_windows
            from memtool.models.perplexity import evaluate

            if data and dataset:
                raise UsageError("give either --data or --dataset, not both")
            if dataset not in (None, "wikitext2"):
                raise UsageError(f"unknown dataset {dataset!r} (supported: wikitext2)")
            source = data or dataset or "builtin"
            wiki = source == "wikitext2"
            L = seq_len or (2048 if wiki else 512)
            n = windows if windows is not None else (None if wiki else 40)
            if n is not None and n < 1:
                raise UsageError("--windows must be at least 1")
            dt = parse_dtype(dtype)
            ref = resolve(model, allow_pickle=allow_pickle, progress=progress)
            bref = resolve(compare, allow_pickle=allow_pickle, progress=progress) if compare else None
            text = load_text(source, split="eval")
            tok = load_tokenizer(ref, trust_remote_code)
            win, score_from = token_windows(tok, text, L, n, stride)
            m = load_model(ref, dtype=dt, device=device, trust_remote_code=trust_remote_code)
            base = load_model(bref, dtype=dt, device=device, trust_remote_code=trust_remote_code) if bref else None
            res = evaluate(m, win, score_from, base=base, device=device, progress=progress)
            protocol = {"corpus": corpus_name(source, "eval"), "text_sha256": text_sha256(text)[:16],
                        "seq_len": L, "stride": stride or L, "windows": len(win), "tokens_scored": res["tokens_scored"],
                        "dtype": dtype, "device": device}
            row = {"model": model, "perplexity": res["perplexity"], "mean_nll": res["mean_nll"]}
            if base is not None:
                row.update(compare=compare, kl_mean=res["kl_mean"], top1_agreement=res["top1_agreement"])
            row["seconds"] = round(res["seconds"], 1)
            return Result("memtool eval", rows=[row], meta={"protocol": protocol})

        run(body, json_=json_, quiet=quiet, debug=debug)
