"""GPU benchmark of memtool's ZO2-style zeroth-order fine-tuning (memtool.offload).

    export PYTHONPATH=$PWD; python scripts/gpu_zo_bench.py [--parts a,b,c] [--out DIR]

(a) parity: offloaded vs resident ZO on a small Llama shape (fp32 and bf16): losses, projected gradients and final
    weights compared bit for bit; RNG bits CPU vs CUDA; the engine end to end on a tiny model.
(b) throughput: resident vs all-blocks-streamed ZO on a ~2.7B Llama shape, bf16 random weights, batch x seq
    4 x 1024: step time, ratio, PCIe GB/s (bytes moved / step time) and the raw pinned copy bandwidth.
(c) scale: a 7B-shaped Llama (bf16 random weights, built on the meta device and materialized straight into
    pinned host memory) with GPU memory capped below 1/4 of the model size: peak GPU memory, step time.
Prints one JSON object per part and writes them to OUT/zo_bench.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback

os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")  # before CUDA starts

import torch  # noqa: E402

sys.path.insert(0, os.getcwd())

from memtool.offload import rng  # noqa: E402
from memtool.offload.zo import ZOConfig, ZOTrainer  # noqa: E402

DEV = torch.device("cuda")


def llama_config(hidden, inter, layers, heads, kv, vocab=32000):
    from transformers import LlamaConfig

    return LlamaConfig(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=kv, vocab_size=vocab,
                       max_position_embeddings=4096, tie_word_embeddings=False)


_SRC: dict = {}


def _materialize(buf: torch.Tensor, name: str, p) -> None:
    """Fill from one random source per dtype (fast: a copy, no second copy of the model)."""
    src = _SRC.get(buf.dtype)
    if src is None or src.numel() < buf.numel():
        src = (torch.randn(max(buf.numel(), 64 << 20), dtype=torch.float32) * 0.02).to(buf.dtype)
        _SRC[buf.dtype] = src
    if p.ndim == 1 and "norm" in name:
        buf.fill_(1.0)
    else:
        buf.copy_(src[: buf.numel()].to(buf.device, non_blocking=False))


def meta_llama(cfg, dtype):
    from transformers import LlamaForCausalLM
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    with torch.device("meta"):
        model = LlamaForCausalLM(cfg).to(dtype)
    try:  # the rotary buffers must be real (computed), not meta
        rot = LlamaRotaryEmbedding(config=cfg, device=DEV)
    except TypeError:
        rot = LlamaRotaryEmbedding(config=cfg).to(DEV)
    model.model.rotary_emb = rot
    model.eval()
    return model


def steps(tr, ids, n_warm, n_time):
    for _ in range(n_warm):
        tr.train_step(ids, ids)
    torch.cuda.synchronize()
    up0, dn0 = tr.streamer.bytes_up, tr.streamer.bytes_down
    t = time.perf_counter()
    losses, times = [], []
    for _ in range(n_time):
        t1 = time.perf_counter()
        losses.append(tr.train_step(ids, ids)["loss"])  # ends with a sync (.tolist of the losses)
        times.append(round(time.perf_counter() - t1, 4))
    torch.cuda.synchronize()
    dt = (time.perf_counter() - t) / n_time
    tr.step_times = times
    moved = (tr.streamer.bytes_up - up0 + tr.streamer.bytes_down - dn0) / n_time
    return dt, moved, losses


def part_a():
    from memtool.models.tiny import tiny_model

    out = {}
    # RNG: the integer bits are the same on CPU and CUDA; the Gaussians agree to an ulp or so
    c = torch.arange(1 << 20, dtype=torch.int64)
    bits_cpu = rng.hash_bits(c, 123456789, 987654321)
    bits_gpu = rng.hash_bits(c.to(DEV), 123456789, 987654321).cpu()
    z_cpu = rng.gaussian(1 << 20, 7, 3, rng.param_key("w"), device="cpu")
    z_tri = rng.gaussian(1 << 20, 7, 3, rng.param_key("w"), device=DEV).cpu()
    z_tgpu = rng.gaussian(1 << 20, 7, 3, rng.param_key("w"), device=DEV, backend="torch").cpu()
    out["rng"] = {"hash_bits_cpu_eq_cuda": bool(torch.equal(bits_cpu, bits_gpu)),
                  "triton_vs_cpu_max_abs": float((z_tri - z_cpu).abs().max()),
                  "triton_vs_cpu_exact_frac": float((z_tri == z_cpu).float().mean()),
                  "torch_cuda_vs_cpu_max_abs": float((z_tgpu - z_cpu).abs().max()),
                  "mean": float(z_tri.mean()), "std": float(z_tri.std())}
    n = 1 << 28
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(5):
        rng.gaussian(n, 1, 2, 3, device=DEV)
    torch.cuda.synchronize()
    out["rng"]["triton_gsamples_per_s"] = 5 * n / (time.perf_counter() - t) / 1e9

    for dtype in (torch.float32, torch.bfloat16):
        res = {}
        for mode in ("off", "on"):
            m = tiny_model("llama", seed=1, dtype=dtype, hidden_size=512, intermediate_size=1376,
                           num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4)
            tr = ZOTrainer(m, ZOConfig(lr=1e-4, eps=1e-3, seed=5, n_perturb=2, grad_accum=2, weight_decay=0.1),
                           DEV, mode)
            g = torch.Generator().manual_seed(0)
            ids = torch.randint(0, 256, (4, 128), generator=g)
            hist = [tr.train_step(ids, ids) for _ in range(6)]
            tr.flush()
            w = {k: v.detach().cpu().clone() for k, v in m.state_dict().items()}
            res[mode] = (hist, w, tr.streamer.n_offloaded)
            tr.close()
        (ha, wa, _), (hb, wb, noff) = res["off"], res["on"]
        out[f"parity_{str(dtype).split('.')[-1]}"] = {
            "blocks_streamed": noff,
            "losses_equal": [a["loss"] for a in ha] == [b["loss"] for b in hb],
            "proj_grads_equal": [a["proj_grad"] for a in ha] == [b["proj_grad"] for b in hb],
            "weights_equal": all(torch.equal(wa[k], wb[k]) for k in wa),
            "losses": [a["loss"] for a in ha],
        }
    # --offload auto under a cap: some blocks resident, the rest streamed; still bit-identical to resident
    res = {}
    for mode in ("off", "auto"):
        m = tiny_model("llama", seed=2, hidden_size=1024, intermediate_size=2816, num_hidden_layers=16,
                       num_attention_heads=8, num_key_value_heads=8)
        blk = sum(p.numel() * 4 for p in m.model.layers[0].parameters())
        tr = ZOTrainer(m, ZOConfig(lr=1e-4, eps=1e-3, seed=3), DEV, mode, reserve_bytes=0,
                       limit_bytes=torch.cuda.memory_allocated() + 12 * blk)
        ids = torch.randint(0, 256, (2, 64), generator=torch.Generator().manual_seed(1))
        hist = [tr.train_step(ids, ids) for _ in range(4)]
        tr.flush()
        res[mode] = ([(h["loss"], h["proj_grad"]) for h in hist], tr.streamer.n_offloaded,
                     {k: v.detach().cpu().clone() for k, v in m.state_dict().items()})
        tr.close()
        del tr, m
        torch.cuda.empty_cache()
    out["auto_mixed"] = {"blocks": 16, "streamed_auto": res["auto"][1], "losses_grads_equal": res["off"][0] == res["auto"][0],
                         "weights_equal": all(torch.equal(res["off"][2][k], res["auto"][2][k]) for k in res["off"][2])}
    # the engine end to end (tiny model, text file)
    import tempfile

    from memtool.models.tiny import save_tiny_model
    from memtool.offload.engine import FinetuneOptions, run_finetune

    with tempfile.TemporaryDirectory() as d:
        save_tiny_model(f"{d}/m", "llama")
        with open(f"{d}/t.txt", "w") as f:
            f.write("zeroth order fine tuning on a GPU. " * 200)
        s = run_finetune(FinetuneOptions(model=f"{d}/m", data=f"{d}/t.txt", steps=20, seq_len=64, batch_size=4,
                                         zo=ZOConfig(lr=1e-3), offload="on", device="cuda",
                                         eval_every=10, output=f"{d}/out"))
        out["engine"] = {k: s[k] for k in ("first_loss", "last_loss", "eval", "blocks_streamed", "checkpoints")}
        s = run_finetune(FinetuneOptions(model=f"{d}/m", data=f"{d}/t.txt", steps=5, seq_len=64, batch_size=4,
                                         zo=ZOConfig(lr=1e-3), offload="auto", device="cuda", gpu_memory=4.0,
                                         output=f"{d}/out2", save_final=False))
        out["engine_auto"] = {k: s[k] for k in ("last_loss", "blocks_streamed", "peak_gpu_gb")}
        torch.cuda.set_per_process_memory_fraction(1.0, torch.cuda.current_device())
    return out


def part_b(batch=4, seq=1024, layers=32, extra=()):
    cfg = llama_config(2560, 6912, layers, 20, 20)
    out = {"shape": "llama hidden 2560, inter 6912, 20 heads, %d layers, vocab 32000, bf16" % layers,
           "batch": batch, "seq": seq}
    # raw pinned copy bandwidth
    h = torch.empty(256 << 20, dtype=torch.bfloat16, pin_memory=True)
    d = torch.empty_like(h, device=DEV)
    for direction in ("h2d", "d2h"):
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(5):
            (d.copy_(h, non_blocking=True) if direction == "h2d" else h.copy_(d, non_blocking=True))
        torch.cuda.synchronize()
        out[f"pinned_{direction}_gbps"] = 5 * h.numel() * 2 / (time.perf_counter() - t) / 1e9
    del h, d
    shapes = [(batch, seq)] + [bs for bs in extra if bs != (batch, seq)]
    for mode in ("off", "on"):
        model = meta_llama(cfg, torch.bfloat16)
        tr = ZOTrainer(model, ZOConfig(lr=1e-6, eps=1e-3), DEV, mode, materialize=_materialize)
        out["params_b"] = sum(p.numel() for p in model.parameters()) / 1e9
        for b, t in shapes:
            ids = torch.randint(0, 32000, (b, t))
            torch.cuda.reset_peak_memory_stats()
            dt, moved, losses = steps(tr, ids, 3, 6)
            key = mode if (b, t) == (batch, seq) else f"{mode}_{b}x{t}"
            out[key] = {"step_s": dt, "tokens_per_s": b * t / dt, "pcie_gbps": moved / dt / 1e9,
                        "bytes_per_step_gb": moved / 1e9, "peak_gpu_gb": torch.cuda.max_memory_allocated() / 2**30,
                        "blocks_streamed": tr.streamer.n_offloaded, "loss": losses[-1],
                        "step_times": tr.step_times}
        tr.close()
        del tr, model
        torch.cuda.empty_cache()
    out["ratio_offload_over_resident"] = out["off"]["step_s"] / out["on"]["step_s"]
    for b, t in shapes[1:]:
        out[f"ratio_{b}x{t}"] = out[f"off_{b}x{t}"]["step_s"] / out[f"on_{b}x{t}"]["step_s"]
    return out


def part_c(batch=2, seq=512, cap_frac=0.24):
    cfg = llama_config(4096, 11008, 32, 32, 32)
    t0 = time.perf_counter()
    model = meta_llama(cfg, torch.bfloat16)
    n_params = sum(p.numel() for p in model.parameters())
    model_gb = n_params * 2 / 2**30
    cap_gb = model_gb * cap_frac
    total = torch.cuda.get_device_properties(DEV).total_memory
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(cap_gb * 2**30 / total, torch.cuda.current_device())
    tr = ZOTrainer(model, ZOConfig(lr=1e-6, eps=1e-3), DEV, "on", materialize=_materialize)
    build_s = time.perf_counter() - t0
    torch.cuda.reset_peak_memory_stats()
    ids = torch.randint(0, 32000, (batch, seq))
    dt, moved, losses = steps(tr, ids, 1, 3)
    out = {"shape": "llama-7B shape (hidden 4096, inter 11008, 32 layers, vocab 32000), bf16",
           "params_b": n_params / 1e9, "model_gb": model_gb, "gpu_cap_gb": cap_gb, "batch": batch, "seq": seq,
           "build_s": build_s, "step_s": dt, "tokens_per_s": batch * seq / dt, "pcie_gbps": moved / dt / 1e9,
           "peak_gpu_gb": torch.cuda.max_memory_allocated() / 2**30,
           "block_gb": sum(p.numel() for p in model.model.layers[0].parameters()) * 2 / 2**30,
           "losses": losses, "step_times": tr.step_times}
    tr.close()
    torch.cuda.set_per_process_memory_fraction(1.0, torch.cuda.current_device())
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--parts", default="a,b,c")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--b-batch", type=int, default=4)
    ap.add_argument("--b-seq", type=int, default=1024)
    ap.add_argument("--b-sweep", default="", help="extra BxT shapes for part b, e.g. 1x512,2x1024")
    args = ap.parse_args()
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    try:
        import transformers

        results["transformers"] = transformers.__version__
    except ImportError:
        pass
    for part in args.parts.split(","):
        fn = {"a": part_a, "b": lambda: part_b(args.b_batch, args.b_seq, extra=[
            tuple(int(v) for v in x.split("x")) for x in args.b_sweep.split(",") if x]), "c": part_c}[part]
        t = time.perf_counter()
        try:
            results[part] = fn()
        except Exception as e:  # noqa: BLE001 - report and go on with the other parts
            results[part] = {"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-3000:]}
        results[part]["wall_s"] = time.perf_counter() - t
        print(json.dumps({part: results[part]}, default=str), flush=True)
        torch.cuda.empty_cache()
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "zo_bench.json"), "w") as f:
        json.dump(results, f, indent=2, default=str)


if __name__ == "__main__":
    main()
