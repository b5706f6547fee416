"""`memtool generate MODEL --prompt TEXT`: continue a prompt (greedy by default) and report tokens/s."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from memtool.cli.common import (AllowPickleOpt, DebugOpt, DeviceOpt, DtypeOpt, JsonOpt, QuietOpt, Result,
                                TrustRemoteCodeOpt, run)


def eos_id(tok, model):
    """The end-of-sequence token (the generation config's first, else the tokenizer's), or None."""
    e = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(e, (list, tuple)):
        e = e[0] if e else None
    return e if e is not None else tok.eos_token_id


def generate_text(model, tok, prompt: str, *, max_new_tokens: int, temperature: float, top_p: float, seed: int,
                  device: str, graph: bool = False) -> dict:
    """transformers' ``generate`` (greedy or sampled), or with ``graph`` memtool's static-cache loop replaying each
    decode step from a CUDA graph (:mod:`memtool.models.decode`), with timing; no math here."""
    import time

    import torch

    enc = tok(prompt, return_tensors="pt")
    ids = enc["input_ids"].to(device)
    mask = enc.get("attention_mask")
    kw = dict(max_new_tokens=max_new_tokens, do_sample=temperature > 0,
              pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
    if temperature > 0:
        kw.update(temperature=temperature, top_p=top_p)
        torch.manual_seed(seed)
    else:  # greedy: clear sampling defaults a generation_config.json may carry
        kw.update(temperature=None, top_p=None, top_k=None)
    st: dict = {}
    t0 = time.perf_counter()
    if graph:
        from memtool.models.decode import static_generate

        new = static_generate(model, ids, max_new_tokens, temperature=temperature, top_p=top_p, seed=seed,
                              eos_token_id=eos_id(tok, model), graph=True, stats=st)  # fmt: skip
    else:
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=None if mask is None else mask.to(device), **kw)
        new = out[0, ids.shape[1]:]
    dt = time.perf_counter() - t0
    return {"text": tok.decode(new, skip_special_tokens=True), "prompt_tokens": int(ids.shape[1]),
            "new_tokens": int(new.numel()), "seconds": round(dt, 3),
            "tokens_per_s": round(new.numel() / dt, 2) if dt > 0 else None,
            "decode_tokens_per_s": round(st["steps"] / st["decode_s"], 2) if st.get("decode_s") else None}


def register(app: typer.Typer) -> None:
    @app.command("generate")
    def generate_cmd(
        model: Annotated[str, typer.Argument(help="Local HF dir, memtool artifact, .gguf file, hub id or 'default'.")],
        prompt: Annotated[str, typer.Option(help="Text to continue.")],
        max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate.")] = 32,
        temperature: Annotated[float, typer.Option(help="0 = greedy; > 0 samples.")] = 0.0,
        top_p: Annotated[float, typer.Option(help="Nucleus sampling mass (with --temperature > 0).")] = 1.0,
        seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
        fuse: Annotated[Optional[bool], typer.Option(
            "--fuse/--no-fuse", help="Compute q/k/v and gate/up LUT layers as one kernel each (default: on CUDA).",
            show_default=False)] = None,  # fmt: skip
        fast_ops: Annotated[Optional[bool], typer.Option(
            "--fast-ops/--no-fast-ops", help="RMSNorms and rotary embeddings as one kernel each (default: on CUDA).",
            show_default=False)] = None,  # fmt: skip
        cuda_graph: Annotated[Optional[bool], typer.Option(
            "--cuda-graph/--no-cuda-graph", help="Decode with a static KV cache, each step replayed from a CUDA graph "
            "(default: on CUDA; falls back to transformers' generate if the model cannot be captured).",
            show_default=False)] = None,  # fmt: skip
        device: DeviceOpt = "cpu",
        dtype: DtypeOpt = "float32",
        allow_pickle: AllowPickleOpt = False,
        trust_remote_code: TrustRemoteCodeOpt = False,
        json_: JsonOpt = False, quiet: QuietOpt = False, debug: DebugOpt = False,
    ) -> None:
        """Generate text from MODEL (memtool artifacts run on memtool's LUT modules)."""

        def body(progress):
            from memtool.errors import UsageError
            from memtool.models import load_model, load_tokenizer, parse_dtype, resolve

            if max_new_tokens < 1:
                raise UsageError("--max-new-tokens must be at least 1")
            if temperature < 0:
                raise UsageError("--temperature must be >= 0")
            if not 0 < top_p <= 1:
                raise UsageError("--top-p must be in (0, 1]")
            if cuda_graph and not device.startswith("cuda"):
                raise UsageError("--cuda-graph needs --device cuda")
            dt = parse_dtype(dtype)
            ref = resolve(model, allow_pickle=allow_pickle, progress=progress)
            tok = load_tokenizer(ref, trust_remote_code)
            m = load_model(ref, dtype=dt, device=device, trust_remote_code=trust_remote_code)
            fused = []
            if fuse or (fuse is None and device.startswith("cuda")):
                from memtool.compress.fuse import fuse_lut_projections

                fused = fuse_lut_projections(m)
            ops, n_norms, n_rotary = None, 0, 0
            if fast_ops or (fast_ops is None and device.startswith("cuda")):
                from memtool.models.fast_ops import use_fast_ops

                ops = use_fast_ops(m)
                n_norms, n_rotary = len(ops.norms), len(ops.rotary)
            args = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed, device=device)
            graph = cuda_graph if cuda_graph is not None else device.startswith("cuda")
            decode = "cuda-graph" if graph else "transformers"
            try:
                res = generate_text(m, tok, prompt, graph=graph, **args)
            except RuntimeError as e:  # a model whose step cannot be captured: transformers' generate instead
                if not graph:
                    raise
                decode = f"transformers (CUDA graph failed: {str(e).splitlines()[0][:120]})"
                res = generate_text(m, tok, prompt, graph=False, **args)
            finally:
                if ops is not None:
                    ops.restore()
            meta = {"model": model, "artifact": ref.is_artifact, "device": device, "dtype": dtype,
                    "prompt": prompt, "text": res["text"], "fused_groups": len(fused), "fast_norms": n_norms,
                    "fast_rotary": n_rotary, "decode": decode}
            keys = ("prompt_tokens", "new_tokens", "seconds", "tokens_per_s", "decode_tokens_per_s")
            row = {k: res[k] for k in keys}
            return Result("memtool generate", rows=[row], meta=meta)

        run(body, json_=json_, quiet=quiet, debug=debug)
