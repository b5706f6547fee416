"""Decode speed of a Llama-2-7B-shaped model: fp16 vs memtool LUT linears (separate and fused), GPU.

    export PYTHONPATH=$PWD; python scripts/gpu_decode_bench.py [--bits 3,4] [--layers 32] [--tokens 64] [--out DIR]

A random-weight LlamaForCausalLM of Llama-2-7B's shapes (hidden 4096, MLP 11008, 32 heads, vocab 32000) in fp16;
then every linear of its decoder layers replaced by a LUT linear of random affine g128 codes (lm_head and the
embeddings stay fp16, as `memtool quantize` leaves them), then the same with q/k/v and gate/up fused
(``memtool generate --fuse``), and the fp16 and fused variants again with their RMSNorms, then also their rotary
embeddings, as one kernel each (``memtool generate --fast-ops``). Greedy decoding of batch 1 after a 16-token prompt, two ways:

- **eager**: transformers' ``generate`` (``memtool generate`` on the CPU or with ``--no-cuda-graph``), tokens/s over
  ``--tokens`` new tokens;
- **graph**: memtool's static-cache loop (``memtool generate --cuda-graph``, :mod:`memtool.models.decode`): one
  decode step captured in a CUDA graph and replayed a token; tokens/s of a whole call of ``--tokens`` new tokens
  (prefill and capture included) and of its replayed steps alone.

The same prompt and the same number of tokens for every variant, in one process; random weights, so the text is
meaningless and only the time counts.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from memtool.compress.fuse import fuse_lut_projections  # noqa: E402
from scripts.gpu_fuse_bench import random_lut_linear  # noqa: E402
from scripts.gpu_lut_bench import save_json  # noqa: E402

PROJ = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def build(layers: int, dev):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=layers, num_attention_heads=32,
                      num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096)  # fmt: skip
    torch.manual_seed(0)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float16)
    try:
        with torch.device(dev):
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(old)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def to_lut(model, bits: int, dev) -> None:
    """Every projection of the decoder layers -> a LutLinear of random affine g128 codes (in place)."""
    gen = torch.Generator(device=dev).manual_seed(bits)
    for layer in model.model.layers:
        for parent in (layer.self_attn, layer.mlp):
            for name in [nm for nm in parent._modules if nm.endswith("_fused")]:  # an earlier fusion's modules
                del parent._modules[name]
            for name in PROJ:
                old = parent._modules.get(name)
                if old is None:
                    continue
                setattr(parent, name, random_lut_linear(old.out_features, old.in_features, bits, gen, spread=0.004))
                del old


def eager(model, ids, tokens: int) -> float:
    """tokens/s of transformers' greedy generate (after a short warm-up run that also tunes the kernels)."""
    kw = dict(do_sample=False, temperature=None, top_p=None, top_k=None, pad_token_id=0)
    model.generate(ids, max_new_tokens=4, min_new_tokens=4, **kw)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = model.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, **kw)
    torch.cuda.synchronize()
    assert out.shape[1] == ids.shape[1] + tokens
    return tokens / (time.perf_counter() - t0)


def graphed(model, ids, tokens: int) -> tuple[float, float]:
    """memtool's CUDA-graph decode (``memtool generate --cuda-graph``): tokens/s of a whole call (prefill, an eager
    step, the capture and the replays) and of its replayed steps alone."""
    from memtool.models.decode import static_generate

    static_generate(model, ids, 4, graph=True)  # warm-up (kernel tuning for the prompt's shapes)
    st = {}
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = static_generate(model, ids, tokens, graph=True, stats=st)
    torch.cuda.synchronize()
    assert out.numel() == tokens
    return tokens / (time.perf_counter() - t0), st["steps"] / st["decode_s"]


def measure(label, model, ids, tokens, rows, gb):
    r = dict(variant=label, weights_gb=round(gb, 2))
    try:
        r["eager_tok_s"] = round(eager(model, ids, tokens), 1)
        r["graph_call_tok_s"], r["graph_step_tok_s"] = (round(v, 1) for v in graphed(model, ids, tokens))
    except Exception as e:  # noqa: BLE001  (report and go on with the next variant)
        r["error"] = repr(e)[:300]
    rows.append(r)
    print(r, flush=True)


def with_fast_ops(label, model, ids, tokens, rows):
    """The same variant with its RMSNorms, then also its rotary embeddings, as one kernel each (``memtool generate
    --fast-ops``), then undone."""
    from memtool.models.fast_ops import use_fast_ops

    ops = use_fast_ops(model, rotary=False)
    measure(f"{label} + fast norms", model, ids, tokens, rows, weights_gb(model))
    ops.restore()
    ops = use_fast_ops(model)
    measure(f"{label} + fast norms + rotary", model, ids, tokens, rows, weights_gb(model))
    ops.restore()


def weights_gb(model) -> float:
    return sum(b.numel() * b.element_size() for b in list(model.parameters()) + list(model.buffers())) / 1e9


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bits", default="3,4")
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    a = ap.parse_args()
    dev = torch.device("cuda")
    props = torch.cuda.get_device_properties(0)
    print(f"device {props.name}", flush=True)
    model = build(a.layers, dev)
    ids = torch.randint(0, 32000, (1, 16), device=dev)
    rows = []
    measure("fp16", model, ids, a.tokens, rows, weights_gb(model))
    with_fast_ops("fp16", model, ids, a.tokens, rows)
    for bits in (int(v) for v in a.bits.split(",")):
        to_lut(model, bits, dev)
        torch.cuda.empty_cache()
        measure(f"lut{bits} separate", model, ids, a.tokens, rows, weights_gb(model))
        fuse_lut_projections(model)
        measure(f"lut{bits} fused", model, ids, a.tokens, rows, weights_gb(model))
        with_fast_ops(f"lut{bits} fused", model, ids, a.tokens, rows)
    save_json(a.out, "decode_bench.json", {"device": props.name, "layers": a.layers, "tokens": a.tokens, "rows": rows})


if __name__ == "__main__":
    main()
