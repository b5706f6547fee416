"""When do the programs of the wgmma LUT kernel start and end? A timeline from inside a CUDA graph (GPU).

    export PYTHONPATH=$PWD; python scripts/gpu_timeline.py [--shape 8192x28672] [--ms 1,16] [--bits 3,4] [--out DIR]

The kernel is launched as the benchmarks time it (a CUDA graph over rotated weight copies, the activation prep before
each launch) with its diagnostic ``times`` buffer: every program stores %globaltimer when it starts and ends and its
SM. From the last replay: each launch's span (first start to last end), the quantiles of its programs' ends, the gap
from one launch's last end to the next one's first start (the prep and the launch in between), and how the SMs
differ (mean end of each SM's programs, relative to its launch's first start). The graph's time per call (no
timers; ``graph_time_us``: 32 calls a replay) and cuBLAS fp16 in the same run, for scale.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from scripts.gpu_lut_bench import cases, graph_time_us, save_json  # noqa: E402

CFG = {1: (8, 64, 7, 4, 3, 0), 16: (16, 64, 4, 4, 4, 0)}  # bm, bn, split, warps, stages, maxnreg (the tuner's first)


def q(t, qs=(0.0, 0.1, 0.5, 0.9, 1.0)):
    return [round(v, 2) for v in torch.quantile(t.double(), torch.tensor(qs, dtype=torch.float64)).tolist()]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="8192x28672")
    ap.add_argument("--ms", default="1,16")
    ap.add_argument("--bits", default="3,4")
    ap.add_argument("--pdl", type=int, default=2, help="programmatic launch level (lut_wgmma.launch's pdl)")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    a = ap.parse_args()
    from memtool.kernels import lut_wgmma as WG

    props = torch.cuda.get_device_properties(0)
    dev = torch.device("cuda")
    print(f"device {props.name}", flush=True)
    res = []
    for n, k, m, x, t16, bits, w, ref, cps in cases(a.shapes, a.ms, a.bits, dev, props.L2_cache_size):
        bm, bn, split, nw, st, reg = CFG[1 if m <= 8 else 16]

        def run(W, times=None):
            return WG.launch(x, W, bm, bn, split, nw, st, maxnreg=reg, times=times, pdl=a.pdl)

        t = graph_time_us([lambda W=W: run(W) for W in cps])
        tims = [torch.zeros(65536, 3, dtype=torch.int64, device=dev) for _ in cps]  # rows past the grid stay 0
        y = run(w, tims[0])
        err = ((y.double() - ref).norm() / ref.norm()).item()
        tt = graph_time_us([lambda W=W, T=T: run(W, T) for W, T in zip(cps, tims)])
        # the last rotation of the last replay (each copy's launches overwrite its buffer)
        lines = []
        prev_end = None
        sm_end = torch.zeros(props.multi_processor_count, dtype=torch.float64)
        sm_cnt = torch.zeros_like(sm_end)
        for T in tims:
            T = T.cpu()
            T = T[T[:, 0] > 0]
            s0 = T[:, 0].min()
            st_ = (T[:, 0] - s0).double() / 1e3
            en = (T[:, 1] - s0).double() / 1e3
            sm_end.index_add_(0, T[:, 2], en)
            sm_cnt.index_add_(0, T[:, 2], torch.ones_like(en))
            gap = None if prev_end is None else (s0 - prev_end).item() / 1e3
            prev_end = T[:, 1].max()
            lines.append(dict(span_us=en.max().item(), starts=q(st_), ends=q(en), gap_us=gap, programs=len(T)))
        spans = [r["span_us"] for r in lines]
        gaps = [r["gap_us"] for r in lines if r["gap_us"] is not None and r["gap_us"] > 0]
        per_sm = sm_end / sm_cnt.clamp(min=1)
        gap = f"{min(gaps):.2f}-{max(gaps):.2f}" if gaps else "n/a"
        print(f"{n}x{k} M={m} q{bits}: graph {t:.1f} us/call ({t16 / t:.2f}x cuBLAS {t16:.1f}), with timers "
              f"{tt:.1f}, err {err:.1e}; span {min(spans):.1f}-{max(spans):.1f} us, gap to next first start {gap} us",
              flush=True)  # fmt: skip
        print(f"  one launch: starts {lines[-1]['starts']} ends {lines[-1]['ends']} (us, quantiles 0/.1/.5/.9/1, "
              f"{lines[-1]['programs']} programs)", flush=True)  # fmt: skip
        # the last launch, program by program (its buffer rows are linear program ids: (pid_m * S + pid_s) * NB + pid_n)
        T = tims[-1].cpu()
        T = T[: int((T[:, 0] > 0).nonzero().max()) + 1]
        en = (T[:, 1] - T[:, 0].min()).double() / 1e3
        nb = n // bn
        sp = en.numel() // nb // -(-m // bm)
        e3 = en[: nb * sp].view(sp, nb)  # [split, row block] (first row block of M)
        per_split = [round(v, 1) for v in e3.mean(1).tolist()]
        rb_mean = e3.mean(0)
        cnt = torch.bincount(T[:, 2], minlength=props.multi_processor_count).double()
        by_cnt = {int(c): round(en[cnt[T[:, 2]] == c].mean().item(), 1) for c in cnt.unique().tolist() if c > 0}
        late = torch.arange(en.numel())[en > en.quantile(0.9)] // nb % sp
        print(f"  mean end by split {per_split}; by row block min/median/max {q(rb_mean, (0.0, 0.5, 1.0))}; "
              f"by programs on the SM {by_cnt}; the latest 10% by split "
              f"{torch.bincount(late, minlength=sp).tolist()}", flush=True)  # fmt: skip
        order = torch.argsort(per_sm)
        print(f"  mean end by SM: fastest {[(int(i), round(per_sm[i].item(), 1)) for i in order[:6]]} slowest "
              f"{[(int(i), round(per_sm[i].item(), 1)) for i in order[-6:]]}", flush=True)  # fmt: skip
        res.append(dict(n=n, k=k, m=m, bits=bits, us=t, fp16_us=t16, us_timers=tt, launches=lines,
                        sm_mean_end=per_sm.tolist(), last_launch=T.tolist()))  # fmt: skip
        del cps
        torch.cuda.empty_cache()
    save_json(a.out, "timeline.json", {"device": props.name, "rows": res})


if __name__ == "__main__":
    main()
