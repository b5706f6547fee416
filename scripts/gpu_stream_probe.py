"""How fast can a kernel only read the bytes of a LUT weight? Streaming probes on a GPU (no decode, no math).

    export PYTHONPATH=$PWD; python scripts/gpu_stream_probe.py [--mb 95,124] [--out DIR]

The LUT kernel (memtool/kernels/lut_wgmma.py) streams 63-72% of the device-copy bandwidth on an H200 with nothing
in the SM saturated (docs/bench/lut_kernels.md, session 8). These probes read the same number of bytes (95 MB: the
3-bit g128 weight of 8192x28672 with its parameters; 124 MB: 4-bit) with plain vectorized loads, one property varied
at a time: programs per SM, bytes a program loads per step, warps a program, and whether a program owns one
contiguous range or the programs take turns over blocks (grid-stride). Each probe XORs what it loads into a
per-program result (so nothing is optimized away) and is timed like the benchmarks: a CUDA graph over copies of the
buffer that together exceed 3x the L2, cuBLAS fp16 of 8192x28672 at M=1 in the same process for reference. The
floor this gives for the LUT kernel: its bytes at the best probe's rate, plus the prep.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import triton
import triton.language as tl

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from scripts.gpu_lut_bench import cublas_fp16_us, graph_time_us, n_copies, save_json  # noqa: E402


@triton.jit
def _read_range(src, out, times, n, per_prog, BLOCK: tl.constexpr, TIMED: tl.constexpr = False):
    """Program p XORs words [p * per_prog, (p + 1) * per_prog) of src, BLOCK words a step; TIMED: also stores
    %globaltimer (ns) when it starts and ends in times[2p], times[2p + 1]."""
    pid = tl.program_id(0)
    if TIMED:
        t0 = tl.inline_asm_elementwise("mov.u64 $0, %globaltimer;", "=l", [], dtype=tl.int64, is_pure=False, pack=1)
    lo = pid.to(tl.int64) * per_prog
    offs = tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK], tl.int32)
    for i in range(0, per_prog, BLOCK):
        idx = lo + i + offs
        acc ^= tl.load(src + idx, mask=idx < n, other=0)
    tl.store(out + pid * BLOCK + offs, acc)
    if TIMED:
        t1 = tl.inline_asm_elementwise("mov.u64 $0, %globaltimer;", "=l", [], dtype=tl.int64, is_pure=False, pack=1)
        tl.store(times + 2 * pid, t0)
        tl.store(times + 2 * pid + 1, t1)


@triton.jit
def _read_strided(src, out, n, nprog, BLOCK: tl.constexpr):
    """Program p XORs blocks p, p + nprog, ... of BLOCK words (the programs read neighbouring blocks together)."""
    pid = tl.program_id(0)
    offs = tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK], tl.int32)
    for b in range(pid, tl.cdiv(n, BLOCK), nprog):
        idx = b * BLOCK + offs  # < 2^31 words
        acc ^= tl.load(src + idx, mask=idx < n, other=0)
    tl.store(out + pid * BLOCK + offs, acc)


@triton.jit
def _read_dynamic(src, out, ctr, n, nchunk, chunk, nprog, BLOCK: tl.constexpr):
    """Programs draw chunks of ``chunk`` words from a counter (ctr[0]; the next ticket is drawn before the current
    chunk is read) until none are left; the last program out (ctr[1]) resets both for the next launch."""
    pid = tl.program_id(0)
    offs = tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK], tl.int32)
    c = tl.atomic_add(ctr, 1)
    while c < nchunk:
        nxt = tl.atomic_add(ctr, 1)
        lo = c.to(tl.int64) * chunk
        for i in range(0, chunk, BLOCK):
            idx = lo + i + offs
            acc ^= tl.load(src + idx, mask=idx < n, other=0)
        c = nxt
    tl.store(out + pid * BLOCK + offs, acc)
    if tl.atomic_add(ctr + 1, 1) == nprog - 1:
        tl.atomic_xchg(ctr, 0)
        tl.atomic_xchg(ctr + 1, 0)


def timeline(bufs, words, sms, per_sm, block, warps):
    """When the programs of one static-range read start and end (ns after the first start), a cold buffer."""
    nprog = sms * per_sm
    out = torch.empty(nprog * block, dtype=torch.int32, device=bufs[0].device)
    times = torch.zeros(nprog, 2, dtype=torch.int64, device=bufs[0].device)
    per = triton.cdiv(triton.cdiv(words, nprog), block) * block
    for b in bufs:  # warm-up, and the last launch leaves the first buffer out of L2
        _read_range[(nprog,)](b, out, times, words, per, BLOCK=block, TIMED=True, num_warps=warps)
    torch.cuda.synchronize()
    _read_range[(nprog,)](bufs[0], out, times, words, per, BLOCK=block, TIMED=True, num_warps=warps)
    torch.cuda.synchronize()
    t = (times - times[:, 0].min()).double().cpu() / 1000.0
    q = torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0], dtype=torch.float64)
    return dict(start_us=torch.quantile(t[:, 0], q).tolist(), end_us=torch.quantile(t[:, 1], q).tolist())


def probe(bufs, words, sms, per_sm, block, warps, strided, dynamic=0):
    nprog = sms * per_sm
    out = torch.empty(nprog * block, dtype=torch.int32, device=bufs[0].device)
    if dynamic:  # chunks of a 1/dynamic of a program's static share, drawn from a counter
        chunk = triton.cdiv(triton.cdiv(words, nprog * dynamic), block) * block
        ctr = torch.zeros(2, dtype=torch.int32, device=bufs[0].device)
        nch = triton.cdiv(words, chunk)
        fns = [lambda b=b: _read_dynamic[(nprog,)](b, out, ctr, words, nch, chunk, nprog, BLOCK=block,
                                                   num_warps=warps) for b in bufs]  # fmt: skip
    elif strided:
        fns = [lambda b=b: _read_strided[(nprog,)](b, out, words, nprog, BLOCK=block, num_warps=warps) for b in bufs]
    else:
        per = triton.cdiv(triton.cdiv(words, nprog), block) * block  # words a program, whole steps
        fns = [lambda b=b: _read_range[(nprog,)](b, out, out, words, per, BLOCK=block, num_warps=warps) for b in bufs]
    return graph_time_us(fns)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", default="95,124", help="bytes to read, MB (10^6)")
    ap.add_argument("--per-sm", default="1,2,4,8")
    ap.add_argument("--blocks", default="1024,4096", help="int32 words a program loads per step")
    ap.add_argument("--warps", default="4,8")
    ap.add_argument("--dynamic", default="2,4,8", help="dynamic chunk probes: chunks a program's share is cut in")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    a = ap.parse_args()
    props = torch.cuda.get_device_properties(0)
    sms, l2 = props.multi_processor_count, props.L2_cache_size
    dev = torch.device("cuda")
    t16 = cublas_fp16_us(torch.randn(1, 28672, device=dev, dtype=torch.float16), 8192, 28672, l2)
    print(f"device {props.name} sms={sms}; cuBLAS fp16 8192x28672 M=1: {t16:.1f} us "
          f"({8192 * 28672 * 2 / t16 / 1e6:.2f} TB/s)", flush=True)  # fmt: skip
    z = torch.zeros(1, device=dev)
    print(f"an almost empty kernel in a graph: {graph_time_us([lambda: z.add_(1)] * 8):.2f} us", flush=True)
    rows = []
    for mb in (float(v) for v in a.mb.split(",")):
        words = int(mb * 1e6) // 4
        ncp = n_copies(words * 4, l2)
        bufs = [torch.randint(0, 2**30, (words,), dtype=torch.int32, device=dev) for _ in range(ncp)]
        print(f"{mb:.0f} MB ({ncp} copies):", flush=True)
        for strided in (False, True):
            for per_sm in (int(v) for v in a.per_sm.split(",")):
                for block in (int(v) for v in a.blocks.split(",")):
                    for warps in (int(v) for v in a.warps.split(",")):
                        t = probe(bufs, words, sms, per_sm, block, warps, strided)
                        r = dict(mb=mb, strided=strided, per_sm=per_sm, block=block, warps=warps, us=t,
                                 tbps=words * 4 / t / 1e6, fp16_us=t16)  # fmt: skip
                        rows.append(r)
                        print(f"  {'strided' if strided else 'ranges '} {per_sm} a SM, {block * 4:5d} B a step, "
                              f"{warps} warps: {t:6.1f} us {r['tbps']:.2f} TB/s ({t16 / t:.2f}x cuBLAS fp16 M=1)",
                              flush=True)  # fmt: skip
        for dyn in (int(v) for v in a.dynamic.split(",") if v):
            for per_sm in (4, 8):
                t = probe(bufs, words, sms, per_sm, 1024, 8, False, dyn)
                r = dict(mb=mb, dynamic=dyn, per_sm=per_sm, block=1024, warps=8, us=t, tbps=words * 4 / t / 1e6,
                         fp16_us=t16)  # fmt: skip
                rows.append(r)
                print(f"  dynamic 1/{dyn} chunks, {per_sm} a SM, 4096 B a step, 8 warps: {t:6.1f} us "
                      f"{r['tbps']:.2f} TB/s ({t16 / t:.2f}x cuBLAS fp16 M=1)", flush=True)  # fmt: skip
        tl_ = timeline(bufs, words, sms, 8, 1024, 8)
        print(f"  timeline (ranges, 8 a SM, 4 KiB, 8 warps), us after the first start, quantiles 0/.1/.5/.9/1: "
              f"starts {[round(v, 1) for v in tl_['start_us']]} ends {[round(v, 1) for v in tl_['end_us']]}",
              flush=True)  # fmt: skip
        rows.append(dict(mb=mb, timeline=tl_))
        best = min((r for r in rows if r["mb"] == mb and "us" in r), key=lambda r: r["us"])
        print(f"BEST {mb:.0f} MB: {best['us']:.1f} us {best['tbps']:.2f} TB/s = {t16 / best['us']:.2f}x cuBLAS fp16 "
              f"at M=1 ({best})", flush=True)  # fmt: skip
        del bufs
        torch.cuda.empty_cache()
    save_json(a.out, "stream_probe.json", {"device": props.name, "fp16_us": t16, "rows": rows})


if __name__ == "__main__":
    main()
