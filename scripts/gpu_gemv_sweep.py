"""Sweep the fast affine GEMV (memtool/kernels/lut_gemv.py) launch configurations on a GPU.

    export PYTHONPATH=$PWD; python scripts/gpu_gemv_sweep.py --out $OUT [--shapes 8192x28672] [--bits 3,4]

Each configuration is checked against a float64 reference, then timed in a CUDA graph over rotated
weight copies (3x L2), next to cuBLAS fp16 in the same process. Results: OUT/gemv_sweep.json.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time

import torch

sys.path.insert(0, os.getcwd())

from memtool.kernels import lut_gemv as LG  # noqa: E402
from scripts.gpu_lut_bench import cases, checked_time_us, graph_time_us, save_json  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="8192x28672,28672x8192,4096x4096")
    ap.add_argument("--bits", default="3,4")
    ap.add_argument("--bns", default="64,128,256")
    ap.add_argument("--bus", default="4,8")
    ap.add_argument("--warps", default="4,8")
    ap.add_argument("--waves", default="2,4,8")
    ap.add_argument("--ms", default="1")
    ap.add_argument("--stages", default="0,2,3")
    ap.add_argument("--budget", type=float, default=400)
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    a = ap.parse_args()
    t0 = time.time()
    props = torch.cuda.get_device_properties(0)
    l2 = getattr(props, "L2_cache_size", 50 * 2**20)
    sms = props.multi_processor_count
    print(f"device {props.name} sms={sms} torch {torch.__version__}", flush=True)
    dev = torch.device("cuda")
    res = []
    for n, k, m, x, t16, bits, w, ref, cps in cases(a.shapes, a.ms, a.bits, dev, l2):
        nb = w.nbytes()
        best = None
        for bu in (int(v) for v in a.bus.split(",")):
            tp = graph_time_us([lambda: LG.prep_activations(x, bits, bu)] * 8)
            print(f"  prep alone (bu={bu}): {tp:.1f} us", flush=True)
        for bn, bu, nw, st, wv in itertools.product(
            *[[int(v) for v in s.split(",")] for s in (a.bns, a.bus, a.warps, a.stages)],
            [float(v) for v in a.waves.split(",")],
        ):
            if time.time() - t0 > a.budget:
                break
            ku = -(-k // 32)
            blocks = -(-n // bn) * m
            split = max(1, min(round(wv * sms / blocks), -(-ku // bu)))
            try:
                err, t = checked_time_us(lambda W: LG.launch_affine(x, W, bn, bu, split, nw, st), w, ref, cps)
            except Exception as e:  # noqa: BLE001
                print(f"  bn={bn} bu={bu} nw={nw} split={split}: FAIL {e!r}"[:300], flush=True)
                continue
            r = dict(n=n, k=k, m=m, bits=bits, bn=bn, bu=bu, nw=nw, st=st, split=split, us=t, fp16_us=t16,
                     speedup=t16 / t, err=err, tbps=(nb + m * k * 2 + m * n * 2) / t / 1e6)  # fmt: skip
            res.append(r)
            if best is None or t < best["us"]:
                best = r
            print(f"  q{bits} bn={bn} bu={bu} nw={nw} st={st} split={split}: {t:.1f} us  {t16 / t:.2f}x  "
                  f"{r['tbps']:.2f} TB/s err={err:.1e}", flush=True)  # fmt: skip
        if best:
            print(f"BEST {n}x{k} m={m} q{bits}: {best['us']:.1f} us {best['speedup']:.2f}x fp16 "
                  f"(bn={best['bn']} bu={best['bu']} nw={best['nw']} st={best['st']} split={best['split']})",
                  flush=True)  # fmt: skip
        del cps
        torch.cuda.empty_cache()
    save_json(a.out, "gemv_sweep.json", {"device": props.name, "rows": res})
    print(f"done in {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
