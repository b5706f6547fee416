"""GPU check + benchmark of memtool's LUT kernels (self-contained; run on a CUDA machine).

    export PYTHONPATH=$PWD; python scripts/gpu_lut_bench.py [--quick] [--budget SECONDS] [--out DIR]

1. Correctness: every kind x bits x path x dtype on ragged shapes vs a float64 reference, output poisoned
   with NaN before each launch (relative error must be < 1e-3 for fp16, < 1e-2 for bf16).
2. Timings (CUDA graphs, weights rotated over enough copies that L2 cannot hold them, do_bench medians):
   memtool LUT (affine, g128, bits 2/3/4) vs cuBLAS fp16 (F.linear) vs torch's int4 tinygemm
   (``_weight_int4pack_mm``, bf16), M in {1, 4, 16, 64}, shapes N x K in {4096x4096, 8192x28672,
   28672x8192}; % of the measured device-copy bandwidth and of the nominal HBM bandwidth.
Full output goes to OUT/gpu_lut_bench.log and OUT/gpu_lut_bench.json; a short table is printed last.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import traceback

import torch

sys.path.insert(0, os.getcwd())

from memtool.kernels import LutWeight, lut_matmul  # noqa: E402
from memtool.kernels import lut_triton as LT  # noqa: E402
from memtool.bench.harness import GRAPH_CALLS  # noqa: E402  (calls a graph replay makes, at least)
from memtool.kernels.lut_ref import lut_matmul_f64  # noqa: E402

T0 = time.time()
LOG = []


def log(*a):
    s = " ".join(str(x) for x in a)
    print(s, flush=True)
    LOG.append(s)


def rand_weight(kind, bits, n, k, g, device, seed=0):
    gen = torch.Generator(device="cpu").manual_seed(seed)
    G = -(-k // g) if g and 0 < g < k else 1
    c = torch.randint(0, 2**bits, (n, k), dtype=torch.uint8, generator=gen)
    r = lambda *s: torch.rand(*s, generator=gen)  # noqa: E731
    if kind == "affine":
        w = LutWeight.from_codes(c, kind, bits, g, scale=r(n, G) * 0.02 + 0.002, bias=(r(n, G) - 0.5) * 0.05)
    elif kind == "bcq":
        w = LutWeight.from_codes(c, kind, bits, g, alpha=r(n, G, bits) * 0.02, offset=(r(n, G) - 0.5) * 0.02)
    else:
        w = LutWeight.from_codes(c, kind, bits, g, scale=r(n, G) * 0.02 + 0.002,
                                 table=torch.sort(torch.randn(2**bits, generator=gen))[0])  # fmt: skip
    return w.to(device)


def check(quick, budget=None):
    dev = torch.device(os.environ.get("LUT_CHECK_DEVICE", "cuda"))
    rows, worst = [], {}
    shapes = [(1, 200, 1000, 128), (3, 96, 333, 64), (16, 130, 576, 128), (33, 64, 700, 32), (64, 256, 576, -1)]
    kinds = ["affine", "bcq", "table"]
    bitss = [2, 3, 4, 8]
    deadline = time.time() + (budget if budget is not None else (60 if quick else 240))
    os.environ["MEMTOOL_LUT_TUNE"] = "0"
    for kind in kinds:
        for bits in bitss:
            for m, n, k, g in shapes:
                if quick and kind != "affine" and (bits not in (3, 4) or (m, g) not in ((1, 128), (33, 32))):
                    continue
                if time.time() > deadline:
                    log("check time budget reached; skipping the rest")
                    break
                w = rand_weight(kind, bits, n, k, g, dev, seed=m + n + bits)
                for dt in (torch.float16, torch.bfloat16):
                    if quick and kind != "affine" and dt == torch.bfloat16:
                        continue
                    x = torch.randn(m, k, device=dev).to(dt)
                    ref = lut_matmul_f64(x, w)
                    cfgs = [("auto", None), ("gemv", LT.Config("gemv", min(4, triton_np2(m)), 64, 8, 3)),
                            ("dot", LT.Config("dot", 16 if m <= 16 else 64, 64, 4, 2))]  # fmt: skip
                    for name, cfg in cfgs:
                        try:
                            x2 = x.reshape(-1, k)
                            if cfg is None:
                                cfg = LT.choose(x2, w)
                            out = torch.full((m, n), float("nan"), device=dev, dtype=dt)
                            y = LT.launch(x2, w, cfg, out=out)
                            torch.cuda.synchronize()
                            err = ((y.double() - ref).norm() / ref.norm()).item()
                            nan = bool(torch.isnan(y).any())
                        except Exception as e:  # noqa: BLE001
                            log(f"FAIL {kind} q{bits} {m}x{n}x{k} g{g} {dt} {name}: {e!r}")
                            log(traceback.format_exc()[-3000:])
                            err, nan = float("inf"), True
                        tol = 1e-3 if dt == torch.float16 else 1e-2
                        ok = (err < tol) and not nan
                        rows.append(dict(kind=kind, bits=bits, m=m, n=n, k=k, g=g, dtype=str(dt), path=name,
                                         err=err, ok=ok))  # fmt: skip
                        key = (kind, str(dt).split(".")[-1], name)
                        worst[key] = max(worst.get(key, 0.0), err if not nan else float("inf"))
                        if not ok:
                            log(f"BAD {kind} q{bits} m{m} n{n} k{k} g{g} {dt} {name} err={err:.3e} nan={nan}")
    os.environ["MEMTOOL_LUT_TUNE"] = "1"
    log("correctness (worst relative error per kind/dtype/path):")
    for key, e in sorted(worst.items()):
        log(f"  {key}: {e:.2e}")
    return rows


def triton_np2(m):
    return 1 << max(0, (m - 1).bit_length())


def graph_time_us(fns, calls=None):
    """Time of one call in steady state, µs: a CUDA graph calls ``fns`` in turn (the rotation), repeated to at
    least ``calls`` calls (default :data:`GRAPH_CALLS`), replayed back to back between two CUDA events (median of 10
    samples of 2 replays, after 3 warm-up replays). ``calls=0``: the method before session 10: one rotation a graph
    (2 calls for the large shapes), timed by do_bench, which flushes the L2 before each replay, so each call also
    carried its share of the per-replay cost (the graph's launch, the flush's dirty lines written back: ~14 µs a
    replay on an H100)."""
    import triton.testing

    reps = max(1, math.ceil((GRAPH_CALLS if calls is None else calls) / len(fns)))  # calls=0: one rotation
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for f in fns:
            f()
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(reps):
            for f in fns:
                f()
    g.replay()
    torch.cuda.synchronize()
    if calls == 0:
        t = triton.testing.do_bench(lambda: g.replay(), warmup=20, rep=150, return_mode="median")
        return t * 1000.0 / (len(fns) * reps)
    for _ in range(3):
        g.replay()
    ts = []
    for _ in range(10):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        g.replay()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b) / 2)
    ts.sort()
    return (ts[4] + ts[5]) / 2 * 1000.0 / (len(fns) * reps)


def checked_time_us(run, w, ref, cps):
    """``run(W)`` launches a kernel with weight W: its relative error against ``ref`` (with ``w``), then its time
    over the rotated copies ``cps`` (graph_time_us)."""
    y = run(w)
    err = ((y.double() - ref).norm() / ref.norm()).item()
    return err, graph_time_us([lambda W=W: run(W) for W in cps])


def cublas_fp16_us(x, n, k, l2, calls=None):
    """cuBLAS fp16 ``F.linear`` time of x [M, K] against rotated random [N, K] weights (graph_time_us, ``calls``)."""
    cps = [torch.randn(n, k, device=x.device, dtype=torch.float16) * 0.02 for _ in range(n_copies(n * k * 2, l2))]
    t = graph_time_us([lambda W=W: torch.nn.functional.linear(x, W) for W in cps], calls)
    del cps
    torch.cuda.empty_cache()
    return t


def copy_bandwidth():
    a = torch.empty(2**28, dtype=torch.float32, device="cuda")  # 1 GiB
    b = torch.empty_like(a)
    a.uniform_()
    import triton.testing

    t = triton.testing.do_bench(lambda: b.copy_(a), warmup=10, rep=100, return_mode="median")
    return 2 * a.numel() * 4 / (t * 1e-3)


def save_json(out_dir, name, payload):
    """Write a script's results as OUT_DIR/NAME (the device tool brings $OUT back)."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, name), "w") as f:
        json.dump(payload, f, indent=1)


def n_copies(nbytes, l2):
    """Copies of a weight timed in turn: together > 3x the L2, and between two uses of one copy > 2x the L2."""
    nbytes = max(nbytes, 1)
    return int(min(64, max(2, math.ceil(3 * l2 / nbytes), math.ceil(2 * l2 / nbytes) + 1)))


def rotated_copies(w, l2):
    """w and enough clones of it that together they are > 3x the L2 (timed in turn, none is found in L2)."""
    return [w] + [LutWeight(**{**w.meta(), **{kk: t.clone() for kk, t in w.state_dict().items()}})
                  for _ in range(n_copies(w.nbytes(), l2) - 1)]  # fmt: skip


def cases(shapes, ms, bits, dev, l2):
    """Every (N x K, M, bits) case of the sweeps: yields (n, k, m, x, cuBLAS fp16 us, bits, affine g128 weight,
    float64 reference, rotated copies); x is fp16 [M, K]."""
    for sh in shapes.split(","):
        n, k = (int(v) for v in sh.split("x"))
        for m in (int(v) for v in ms.split(",")):
            x = torch.randn(m, k, device=dev, dtype=torch.float16)
            t16 = cublas_fp16_us(x, n, k, l2)
            print(f"{n}x{k} m={m} cuBLAS fp16 {t16:.1f} us", flush=True)
            for b in (int(v) for v in bits.split(",")):
                w = rand_weight("affine", b, n, k, 128, dev, seed=b)
                yield n, k, m, x, t16, b, w, lut_matmul_f64(x, w), rotated_copies(w, l2)


def bench(args, l2, bw_copy, deadline):
    dev = torch.device("cuda")
    shapes = [tuple(int(v) for v in sh.split("x")) for sh in args.shapes.split(",")]
    ms = [int(v) for v in args.ms.split(",")]
    bitss = [int(v) for v in args.bits.split(",")]
    res = []
    for n, k in shapes:
        for m in ms:
            xk = torch.randn(m, k, device=dev, dtype=torch.float16)
            t16 = cublas_fp16_us(xk, n, k, l2)
            # tinygemm int4 (bf16 activations)
            ttiny = None
            try:
                xb = xk.to(torch.bfloat16)
                wq = torch.randint(0, 16, (n, k), dtype=torch.int32, device=dev)
                wu8 = (wq[:, ::2] << 4 | wq[:, 1::2]).to(torch.uint8)
                packed = torch.ops.aten._convert_weight_to_int4pack(wu8, 8)
                sz = torch.randn(k // 128, n, 2, device=dev, dtype=torch.bfloat16) * 0.01
                wb = n * k // 2
                cps = [(packed.clone(), sz.clone()) for _ in range(n_copies(wb, l2))]
                ttiny = graph_time_us(
                    [lambda P=P, S=S: torch.ops.aten._weight_int4pack_mm(xb, P, 128, S) for P, S in cps]
                )
                del cps
            except Exception as e:  # noqa: BLE001
                log(f"tinygemm n/a: {e!r}"[:300])
            for bits in bitss:
                if time.time() > deadline:
                    log("time budget reached; stopping benchmarks")
                    return res
                w = rand_weight("affine", bits, n, k, 128, dev, seed=bits)
                x2 = xk
                y = lut_matmul(x2, w)  # tunes
                cfg = LT.choose(x2, w)
                ref = lut_matmul_f64(x2, w)
                err = ((y.double() - ref).norm() / ref.norm()).item()
                nb = w.nbytes()
                cps = rotated_copies(w, l2)
                t = graph_time_us([lambda W=W: LT.launch(x2, W, cfg) for W in cps])
                byts = nb + m * k * 2 + m * n * 2
                row = dict(n=n, k=k, m=m, bits=bits, us=t, fp16_us=t16, tiny_us=ttiny,
                           speedup=t16 / t, tiny_speedup=(t16 / ttiny) if ttiny else None,
                           tbps=byts / (t * 1e-6) / 1e12, pct_copy=100 * byts / (t * 1e-6) / bw_copy,
                           pct_nominal=100 * byts / (t * 1e-6) / 3.35e12, cfg=str(cfg), err=err)  # fmt: skip
                res.append(row)
                log(json.dumps(row))
                del cps
            torch.cuda.empty_cache()
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--budget", type=float, default=300.0)
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--skip-check", action="store_true")
    ap.add_argument("--shapes", default="8192x28672,28672x8192,4096x4096", help="N x K list")
    ap.add_argument("--ms", default="1,16,64,4")
    ap.add_argument("--bits", default="3,4,2")
    ap.add_argument("--check-s", type=float, default=None, help="time budget of the correctness phase")
    args = ap.parse_args()
    import triton

    props = torch.cuda.get_device_properties(0)
    l2 = getattr(props, "L2_cache_size", 50 * 2**20)
    log(f"device {props.name} sms={props.multi_processor_count} L2={l2 / 2**20:.0f}MiB torch {torch.__version__} "
        f"triton {triton.__version__} date {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")  # fmt: skip
    bw = copy_bandwidth()
    log(f"device copy bandwidth (read+write): {bw / 1e12:.2f} TB/s")
    rows = [] if args.skip_check else check(args.quick, args.check_s)
    nbad = sum(not r["ok"] for r in rows)
    log(f"correctness: {len(rows) - nbad}/{len(rows)} ok  ({time.time() - T0:.0f}s)")
    res = bench(args, l2, bw, T0 + args.budget)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "gpu_lut_bench.json"), "w") as f:
        json.dump({"device": props.name, "copy_bw": bw, "check": rows, "bench": res}, f, indent=1)
    log("")
    log("| N x K | M | bits | LUT us | fp16 us | speedup | tinygemm x | TB/s | % copy BW | cfg |")
    log("|---|---|---|---|---|---|---|---|---|---|")
    for r in res:
        ts = f"{r['tiny_speedup']:.2f}" if r["tiny_speedup"] else "n/a"
        log(f"| {r['n']}x{r['k']} | {r['m']} | {r['bits']} | {r['us']:.1f} | {r['fp16_us']:.1f} | "
            f"{r['speedup']:.2f} | {ts} | {r['tbps']:.2f} | {r['pct_copy']:.0f} | {r['cfg']} |")  # fmt: skip
    log(f"correctness: {len(rows) - nbad}/{len(rows)} ok; total {time.time() - T0:.0f}s")
    with open(os.path.join(args.out, "gpu_lut_bench.log"), "w") as f:
        f.write("\n".join(LOG))


if __name__ == "__main__":
    main()
