"""Time ``memtool quantize`` (RTN, library call) on a random 7B-shaped Llama checkpoint on one GPU.

    export PYTHONPATH=$PWD; python scripts/gpu_quantize_7b.py --dir /tmp/llama7b --out $OUT [--bits 3]

1. A child process writes a Llama-2-7B-shaped checkpoint (fp16 safetensors, ~4 GiB shards, random weights,
   13.5 GB) unless ``--dir`` already holds one.
2. A fresh child process quantizes it (``quantize_model``, RTN, ``device="cuda"``) and reports the wall time,
   its peak RSS (``ru_maxrss``) next to the largest shard, and the artifact size. Results: OUT/quantize_7b.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32000,
    "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "torch_dtype": "float16", "tie_word_embeddings": False,
    "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2,
}  # fmt: skip


def write_checkpoint(d: str, shard_bytes: int, device: str) -> None:
    import torch
    from safetensors.torch import save_file

    os.makedirs(d, exist_ok=True)
    h, i, v, L = CONFIG["hidden_size"], CONFIG["intermediate_size"], CONFIG["vocab_size"], CONFIG["num_hidden_layers"]
    shapes = [("model.embed_tokens.weight", (v, h))]
    for layer in range(L):
        p = f"model.layers.{layer}."
        shapes += [(p + f"self_attn.{x}_proj.weight", (h, h)) for x in "qkvo"]
        shapes += [(p + "mlp.gate_proj.weight", (i, h)), (p + "mlp.up_proj.weight", (i, h)),
                   (p + "mlp.down_proj.weight", (h, i))]  # fmt: skip
        shapes += [(p + "input_layernorm.weight", (h,)), (p + "post_attention_layernorm.weight", (h,))]
    shapes += [("model.norm.weight", (h,)), ("lm_head.weight", (v, h))]
    gen = torch.Generator(device=device).manual_seed(0)
    shards, cur, size = [], {}, 0
    for name, shape in shapes:
        t = (torch.randn(*shape, generator=gen, device=device, dtype=torch.float16) * 0.02).cpu()
        if size + t.numel() * 2 > shard_bytes and cur:
            shards.append(cur)
            cur, size = {}, 0
        cur[name] = t
        size += t.numel() * 2
    shards.append(cur)
    wmap, total = {}, 0
    for j, sd in enumerate(shards):
        fn = f"model-{j + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(sd, os.path.join(d, fn), metadata={"format": "pt"})
        for k, t in sd.items():
            wmap[k] = fn
            total += t.numel() * 2
    with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": wmap}, f)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(CONFIG, f)


def quantize(d: str, out: str, bits: int, device: str) -> dict:
    import resource

    import torch

    from memtool.compress.quantize import QuantizeSpec, quantize_model
    from memtool.progress import PlainProgress

    t0 = time.perf_counter()
    res = quantize_model(d, out, QuantizeSpec(bits=bits, group_size=128, device=device), overwrite=True,
                         progress=PlainProgress(), command=["gpu_quantize_7b"])  # fmt: skip
    wall = time.perf_counter() - t0
    shards = [os.path.getsize(os.path.join(d, f)) for f in os.listdir(d) if f.endswith(".safetensors")]
    art = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out) if f.endswith(".safetensors"))
    return {"seconds": round(wall, 1), "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
            "largest_shard_gib": round(max(shards) / 2**30, 2), "n_shards": len(shards),
            "checkpoint_gib": round(sum(shards) / 2**30, 2), "artifact_gib": round(art / 2**30, 3),
            "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
            "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None,
            "totals": res["totals"]}  # fmt: skip


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="/tmp/llama7b")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--bits", type=int, default=3)
    ap.add_argument("--shard-gib", type=float, default=4.0)
    ap.add_argument("--step", default="all", choices=["all", "write", "quantize"])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--small", action="store_true", help="a 4-layer 256-wide model (smoke test of the script)")
    ap.add_argument("--medium", action="store_true", help="a 2048-wide 8-layer model (RSS checks on a CPU)")
    a = ap.parse_args()
    if a.medium:
        CONFIG.update(hidden_size=2048, intermediate_size=5504, num_hidden_layers=8, num_attention_heads=16,
                      num_key_value_heads=16)  # fmt: skip
    if a.small:
        CONFIG.update(hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                      num_key_value_heads=4, vocab_size=1000)  # fmt: skip
    if a.step == "write":
        write_checkpoint(a.dir, int(a.shard_gib * 2**30), a.device)
        return
    if a.step == "quantize":
        print(json.dumps(quantize(a.dir, a.dir + "-q", a.bits, a.device)))
        return
    t0 = time.time()
    if not os.path.exists(os.path.join(a.dir, "model.safetensors.index.json")):
        subprocess.run([sys.executable, __file__, "--dir", a.dir, "--shard-gib", str(a.shard_gib), "--step", "write",
                        "--device", a.device] + (["--small"] if a.small else []) + (["--medium"] if a.medium else []),
                       check=True)  # fmt: skip
    print(f"checkpoint ready in {time.time() - t0:.0f}s", flush=True)
    r = subprocess.run([sys.executable, __file__, "--dir", a.dir, "--bits", str(a.bits), "--step", "quantize",
                        "--device", a.device], capture_output=True, text=True)  # fmt: skip
    if r.returncode:
        sys.exit(f"quantize failed:\n{r.stderr[-5000:]}")
    res = json.loads(r.stdout.strip().splitlines()[-1])
    print(r.stderr[-3000:])
    print(json.dumps({k: v for k, v in res.items() if k != "totals"}, indent=1))
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "quantize_7b.json"), "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
