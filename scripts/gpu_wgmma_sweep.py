"""Check and sweep the Hopper wgmma LUT kernel (memtool/kernels/lut_wgmma.py) on a GPU.

    export PYTHONPATH=$PWD; python scripts/gpu_wgmma_sweep.py --out $OUT [--shapes 8192x28672] [--ms 1,16,64]

First every configuration family is checked against float64 (fp16 and bf16, 2/3/4 bits, group 128/256 and
per-channel, ragged M); then each configuration is timed in a CUDA graph over rotated weight copies (3x L2)
next to cuBLAS fp16 and the dispatcher's current choice for the same shape, in the same process.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
import traceback

import torch

sys.path.insert(0, os.getcwd())

from memtool.kernels import lut_triton as LT  # noqa: E402
from memtool.kernels import lut_wgmma as WG  # noqa: E402
from memtool.kernels.lut_ref import lut_matmul_f64  # noqa: E402
from memtool.kernels.lut_types import LutWeight  # noqa: E402
from scripts.gpu_lut_bench import cases, checked_time_us, graph_time_us, rand_weight, save_json  # noqa: E402


def check(dev):
    bad = 0
    cases = [(1, 128, 256, 128, 64, 1), (3, 192, 640, 256, 128, 3), (16, 256, 384, -1, 128, 1),
             (17, 128, 1024, 128, 64, 3), (64, 64, 512, 128, 64, 2), (100, 256, 256, 128, 128, 1),
             (1, 128, 4096, 128, 64, 5), (16, 128, 4096, 256, 64, 4)]  # fmt: skip
    for m, n, k, g, bn, split in cases:
        for bits in (2, 3, 4):
            w = rand_weight("affine", bits, n, k, g, dev, seed=m + bits)
            for dt in (torch.float16, torch.bfloat16):
                x = torch.randn(m, k, device=dev, dtype=dt)
                ref = lut_matmul_f64(x, w)
                bm = min(64, max(8, 1 << (m - 1).bit_length()))
                variants = [(64, 4, False, 3, 0, 0), (64, 4, False, 6, 0, 1),
                            (128, 8, False, 4, 0, 0), (bn, 4, True, 3, 0, 0),
                            (64, 4, False, 4, 96, 2), (128, 8, False, 3, 0, 2)]  # fmt: skip
                for vbn, nw, fold, stg, reg, pdl in variants:
                    try:
                        out = torch.full((m, n), float("nan"), device=dev, dtype=dt)
                        y = WG.launch(x, w, bm, vbn, split, nw, stg, fold=fold, maxnreg=reg, out=out, pdl=pdl)
                        err = ((y.double() - ref).norm() / ref.norm()).item()
                        ok = err < (1e-3 if dt == torch.float16 else 1e-2) and not torch.isnan(y).any()
                    except Exception:  # noqa: BLE001
                        traceback.print_exc()
                        err, ok = float("nan"), False
                    bad += not ok
                    print(f"check m={m} n={n} k={k} g={g} q{bits} {str(dt)[6:]} bn={vbn} nw={nw} fold={fold} "
                          f"st={stg} reg={reg} pdl={int(pdl)} split={split}: {'ok' if ok else 'FAIL'} {err:.1e}",
                          flush=True)  # fmt: skip
    return bad


def centered(bits, seed, n=4096, k=4096, g=128):
    """Affine weights whose groups have mean zero (the bias centres the codes), so that a chain of them keeps
    the activations' scale (random biases grow it a hundredfold a step)."""
    gen = torch.Generator().manual_seed(seed)
    c = torch.randint(0, 2**bits, (n, k), dtype=torch.uint8, generator=gen)
    s = (torch.rand(n, k // g, generator=gen) + 0.5) * (3.0 / ((2**bits - 1) * k**0.5))
    return LutWeight.from_codes(c, "affine", bits, g, scale=s, bias=-s * (2**bits - 1) / 2)


def chain_check(dev, steps=6):
    """Back-to-back calls that feed each other (y_i+1 = y_i W_i^T, 4096x4096) with every programmatic-launch level
    (2: the next call's prep starts during this kernel and waits for it), eagerly into NaN-filled outputs and in a
    CUDA graph replayed with two different inputs (a read of the previous replay's values would show): every step
    against float64 of the previous step's output. Returns the failures."""
    bad = 0
    for m, bits, split in ((1, 3, 4), (16, 4, 3), (16, 3, 1)):
        ws = [centered(bits, seed=10 * i + bits).to(dev) for i in range(steps)]
        bm = min(64, max(8, 1 << (m - 1).bit_length()))
        for pdl in (0, 1, 2):

            def chain(x0, outs):
                y = x0
                for w, o in zip(ws, outs):
                    y = WG.launch(y, w, bm, 64, split, 4, 3, out=o, pdl=pdl)
                return y

            def verify(x0, outs, how):
                nonlocal bad
                prev, worst = x0, 0.0
                for w, o in zip(ws, outs):
                    ref = lut_matmul_f64(prev, w)
                    worst = max(worst, ((o.double() - ref).norm() / ref.norm()).item())
                    prev = o
                ok = worst < 1e-3 and all(torch.isfinite(o).all() for o in outs)
                bad += not ok
                print(f"chain m={m} q{bits} split={split} pdl={pdl} {how}: {'ok' if ok else 'FAIL'} {worst:.1e}",
                      flush=True)  # fmt: skip

            x0 = torch.randn(m, 4096, device=dev, dtype=torch.float16) 
            outs = [torch.full((m, 4096), float("nan"), device=dev, dtype=torch.float16) for _ in ws]
            torch.cuda.synchronize()
            chain(x0, outs)
            torch.cuda.synchronize()
            verify(x0, outs, "eager")
            xs = x0.clone()
            chain(xs, outs)  # compile/warm outside the capture
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                chain(xs, outs)
            for trial in range(2):
                xs.copy_(torch.randn_like(xs) )
                g.replay()
                torch.cuda.synchronize()
                verify(xs, outs, f"graph replay {trial}")
    return bad


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="8192x28672,28672x8192,4096x4096")
    ap.add_argument("--bits", default="3,4")
    ap.add_argument("--ms", default="1,4,16,64")
    ap.add_argument("--bns", default="64,128")
    ap.add_argument("--waves", default="1,2,4,8")
    ap.add_argument("--warps", default="4")
    ap.add_argument("--splits", default="", help="explicit split-K values (instead of --waves)")
    ap.add_argument("--no-check", action="store_true")
    ap.add_argument("--check-only", action="store_true")
    ap.add_argument("--chain-only", action="store_true", help="only the back-to-back (programmatic launch) check")
    ap.add_argument("--module", default="lut_wgmma", help="kernel module under memtool.kernels (A/B runs)")
    ap.add_argument("--stages", default="3")
    ap.add_argument("--maxnreg", default="0", help="register caps to sweep (0: the compiler's choice)")
    ap.add_argument("--fold", default="auto", help="0: exact per-tile scaling, 1: scale folded into the decode, "
                    "auto: the kernel's default (fold at bm >= 32); a comma list sweeps")
    ap.add_argument("--no-dispatch", action="store_true")
    ap.add_argument("--budget", type=float, default=400)
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    a = ap.parse_args()
    global WG
    WG = importlib.import_module(f"memtool.kernels.{a.module}")
    t0 = time.time()
    props = torch.cuda.get_device_properties(0)
    l2 = getattr(props, "L2_cache_size", 50 * 2**20)
    sms = props.multi_processor_count
    print(f"device {props.name} sms={sms} torch {torch.__version__}", flush=True)
    dev = torch.device("cuda")
    if a.chain_only:
        print(f"chain check: {chain_check(dev)} failures ({time.time() - t0:.0f}s)", flush=True)
        return
    bad = 0 if a.no_check else check(dev) + chain_check(dev)
    print(f"check: {bad} failures ({time.time() - t0:.0f}s)", flush=True)
    if a.check_only:
        return
    res = []
    for n, k, m, x, t16, bits, w, ref, cps in cases(a.shapes, a.ms, a.bits, dev, l2):
        if time.time() - t0 > a.budget:
            break
        nb = w.nbytes()
        tp = graph_time_us([lambda: WG.prep_activations(x, bits)] * 8)
        part = torch.zeros(4, m, n, device=dev)
        yo = torch.empty(m, n, device=dev, dtype=x.dtype)
        tr = graph_time_us([lambda: LT._reduce_kernel[(-(-m * n // 1024),)](part, yo, m * n, 4, BLOCK=1024)] * 8)
        print(f"  q{bits} prep alone {tp:.1f} us, split-4 reduce alone {tr:.1f} us", flush=True)
        td = None
        if not a.no_dispatch:
            cfg = LT.choose(x, w)
            td = graph_time_us([lambda W=W: LT.launch(x, W, cfg) for W in cps])
            print(f"  q{bits} dispatcher {cfg.path} bn={cfg.bn} split={cfg.split}: {td:.1f} us "
                  f"{t16 / td:.2f}x   (wgmma prep alone {tp:.1f} us)", flush=True)  # fmt: skip
        bm = min(64, max(8, 1 << (m - 1).bit_length()))
        best = None
        for nw, stg, fold, reg in ((int(v), int(sv), None if fv == "auto" else fv == "1", int(rv))
                                   for v in a.warps.split(",") for sv in a.stages.split(",")
                                   for fv in a.fold.split(",") for rv in a.maxnreg.split(",")):  # fmt: skip
            for bn in (int(v) for v in a.bns.split(",")):
                if bm == 64 and bn > 64 and nw == 4:
                    continue  # spills
                if bn < 16 * nw or bn > 32 * nw or (bn != 16 * nw and not fold and bm < 32):
                    continue
                blocks = (n // bn) * -(-m // bm)
                splits = [int(v) for v in a.splits.split(",")] if a.splits else sorted(
                    {max(1, min(round(float(wv) * sms / blocks), k // 128)) for wv in a.waves.split(",")})
                for split in splits:
                    kw = {"stages": stg, "fold": fold, "maxnreg": reg}
                    try:
                        err, t = checked_time_us(lambda W: WG.launch(x, W, bm, bn, split, nw, **kw), w, ref, cps)
                    except Exception as e:  # noqa: BLE001
                        print(f"  bm={bm} bn={bn} nw={nw} split={split}: FAIL {e!r}"[:400], flush=True)
                        continue
                    kern = getattr(WG, "LAST", {}).get("kernel")
                    nreg = getattr(kern, "n_regs", None)
                    r = dict(n=n, k=k, m=m, bits=bits, bm=bm, bn=bn, nw=nw, stages=stg, fold=fold, maxnreg=reg,
                             nregs=nreg, spills=getattr(kern, "n_spills", None),
                             split=split, us=t, fp16_us=t16, dispatch_us=td, prep_us=tp, speedup=t16 / t, err=err,
                             tbps=(nb + m * k * 2 + m * n * 2) / t / 1e6)  # fmt: skip
                    res.append(r)
                    if best is None or t < best["us"]:
                        best = r
                    print(f"  q{bits} bm={bm} bn={bn} nw={nw} st={stg} fold={fold} reg={reg}/{nreg} "
                          f"split={split}: "
                          f"{t:.1f} us {t16 / t:.2f}x "
                          f"{r['tbps']:.2f} TB/s err={err:.1e}", flush=True)  # fmt: skip
        if best:
            print(f"BEST {n}x{k} m={m} q{bits}: {best['us']:.1f} us {best['speedup']:.2f}x fp16 "
                  f"(bn={best['bn']} nw={best['nw']} fold={best['fold']} split={best['split']}); dispatcher "
                  f"{td if td is None else round(td, 1)} us", flush=True)  # fmt: skip
        del cps
        torch.cuda.empty_cache()
    save_json(a.out, "wgmma_sweep.json", {"device": props.name, "check_failures": bad, "rows": res})
    print(f"done in {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
