"""How much of a graph-timed call is the graph's own per-replay cost? cuBLAS fp16 and the LUT kernel, both ways (GPU).

    export PYTHONPATH=$PWD; python scripts/gpu_timing_method.py [--shapes 8192x28672] [--ms 1,16] [--bits 3,4]

Until session 10 the GPU scripts timed one rotation of weight copies per CUDA graph (2 calls for the large shapes)
with do_bench, which flushes the L2 (a 256 MB memset) before each replay: every call carried half of the replay's
fixed cost (the graph's launch; the dirty lines of the flush written back while the first kernel reads). Here the
same calls are timed with 0 (that method), 8, 32 and 128 calls a replay (``scripts/gpu_lut_bench.graph_time_us``:
back-to-back replays between CUDA events), cuBLAS fp16 and memtool's LUT path (the dispatcher's tuned
configuration) side by side, so the per-call cost in a long graph (a model's decode step) is seen for both.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from scripts.gpu_lut_bench import cublas_fp16_us, graph_time_us, rand_weight, rotated_copies, save_json  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="8192x28672")
    ap.add_argument("--ms", default="1,16")
    ap.add_argument("--bits", default="3,4")
    ap.add_argument("--calls", default="0,8,32,128")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    a = ap.parse_args()
    from memtool.kernels import lut_matmul
    from memtool.kernels import lut_triton as LT

    props = torch.cuda.get_device_properties(0)
    l2 = props.L2_cache_size
    dev = torch.device("cuda")
    calls = [int(v) for v in a.calls.split(",")]
    print(f"device {props.name}; calls a replay {calls} (0: one rotation, do_bench)", flush=True)
    rows = []
    for sh in a.shapes.split(","):
        n, k = (int(v) for v in sh.split("x"))
        for m in (int(v) for v in a.ms.split(",")):
            x = torch.randn(m, k, device=dev, dtype=torch.float16)
            t16 = {c: cublas_fp16_us(x, n, k, l2, c) for c in calls}
            print(f"{n}x{k} M={m} cuBLAS fp16: " + ", ".join(f"{c}: {t:.1f}" for c, t in t16.items()), flush=True)
            for bits in (int(v) for v in a.bits.split(",")):
                w = rand_weight("affine", bits, n, k, 128, dev, seed=bits)
                lut_matmul(x, w)  # tunes
                cfg = LT.choose(x, w)
                cps = rotated_copies(w, l2)
                tl = {c: graph_time_us([lambda W=W: LT.launch(x, W, cfg) for W in cps], c) for c in calls}
                print(f"  q{bits} ({len(cps)} copies, {cfg}): " + ", ".join(
                    f"{c}: {t:.1f} us {t16[c] / t:.2f}x" for c, t in tl.items()), flush=True)  # fmt: skip
                rows.append(dict(n=n, k=k, m=m, bits=bits, cfg=str(cfg), copies=len(cps),
                                 fp16_us={str(c): v for c, v in t16.items()},
                                 lut_us={str(c): v for c, v in tl.items()}))  # fmt: skip
                del cps
                torch.cuda.empty_cache()
    save_json(a.out, "timing_method.json", {"device": props.name, "rows": rows})


if __name__ == "__main__":
    main()
