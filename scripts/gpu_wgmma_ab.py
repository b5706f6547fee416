"""A/B timing of wgmma-kernel variants side by side in one process (GPU).

    export PYTHONPATH=$PWD; python scripts/gpu_wgmma_ab.py [--shapes 8192x28672] [--ms 1,16] [--bits 3,4]
        [--v1 SPEC,...] [--v16 SPEC,...] [--prep TB/WARPS,...] [--out DIR]

A variant SPEC is ``bm/bn/warps/stages/split/pdl/maxnreg/fold/module`` (``--v1`` for M <= 8, ``--v16`` above;
``module@alone``: the kernel alone, the prep's results computed once before the timing);
``module`` names a module under ``memtool.kernels`` with lut_wgmma's ``launch``. To compare with an earlier
revision, copy it next to the current one (``git show REV:memtool/kernels/lut_wgmma.py >
memtool/kernels/_ab_old.py``, with its plan module if that changed too, imported from the copy and with another
``w.cache`` key in its ``tile_params``) and name ``_ab_old`` in a spec (modules
whose name starts with ``_ab`` get no ``pdl``/``fold`` arguments: older launch signatures). Each variant is
checked against float64, then timed in a CUDA graph over rotated weight copies (> 3x L2), with cuBLAS fp16 in the
same run. ``--prep``: time the activation prep alone with other programs/warps (TB tiles a program).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from scripts.gpu_lut_bench import cases, checked_time_us, graph_time_us, save_json  # noqa: E402

DEFAULT = {  # the tuner's first choices on 8192x28672 (H100, session 5)
    1: "8/64/4/3/7/1/0/0/lut_wgmma,8/64/4/3/6/1/0/0/lut_wgmma",
    16: "16/64/4/3/5/1/96/0/lut_wgmma,16/64/4/4/4/1/0/0/lut_wgmma",
}


def variants(spec):
    """Comma-separated specs -> (label, module, launch kwargs)."""
    out = []
    for v in spec.split(","):
        bm, bn, nw, st, sp, pdl, reg, fold, mod = v.split("/")
        alone = mod.endswith("@alone")  # the kernel alone: the prep's results computed once, outside the timing
        mod = mod.removesuffix("@alone")
        kw = dict(bm=int(bm), bn=int(bn), num_warps=int(nw), stages=int(st), split=int(sp), maxnreg=int(reg))
        if not mod.startswith("_ab"):
            kw.update(pdl=int(pdl), fold=fold == "1" or None)
        out.append((v, mod, kw, alone))
    return out


PREP: dict = {}  # module -> its own prep_activations


def _memo(prep):
    """prep_activations computing each input's results once (time the kernel alone)."""
    memo = {}

    def f(x2, bits, pdl=False, **kw):
        key = (x2.data_ptr(), tuple(x2.shape), bits, tuple(sorted(kw.items())))
        if key not in memo:
            memo[key] = prep(x2, bits, **kw)
        return memo[key]

    return f


def time_prep(x, bits, specs):
    """The activation prep alone, with TB tiles and WARPS warps a program (the kernel's BM for this M)."""
    from memtool.kernels import lut_wgmma_plan as WP

    bm = min(64, max(8, 1 << (x.shape[0] - 1).bit_length()))
    for pv in filter(None, specs.split(",")):
        tb, pw = (int(u) for u in pv.split("/"))
        t = graph_time_us([lambda: WP.prep_activations(x, bits, bm=bm, tb=tb, num_warps=pw)] * 8)
        print(f"  q{bits} prep TB={tb} warps={pw}: {t:.2f} us", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="8192x28672")
    ap.add_argument("--ms", default="1,16")
    ap.add_argument("--bits", default="3,4")
    ap.add_argument("--budget", type=float, default=400)
    ap.add_argument("--v1", default=DEFAULT[1], help="variants at M <= 8")
    ap.add_argument("--v16", default=DEFAULT[16], help="variants at M > 8")
    ap.add_argument("--prep", default="", help="prep TB/warps to time, e.g. 4/1,4/4")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    a = ap.parse_args()
    t0 = time.time()
    props = torch.cuda.get_device_properties(0)
    l2 = props.L2_cache_size
    print(f"device {props.name}", flush=True)
    dev = torch.device("cuda")
    z = torch.zeros(1, device=dev)
    print(f"an almost empty kernel in a graph: {graph_time_us([lambda: z.add_(1)] * 8):.2f} us", flush=True)
    WG = importlib.import_module("memtool.kernels.lut_wgmma")
    rows = []
    for n, k, m, x, t16, bits, w, ref, cps in cases(a.shapes, a.ms, a.bits, dev, l2):
        tp = graph_time_us([lambda: WG.prep_activations(x, bits)] * 8)
        print(f"  q{bits} prep alone {tp:.2f} us", flush=True)
        time_prep(x, bits, a.prep)
        for label, mod, kw, alone in variants(a.v1 if m <= 8 else a.v16):
            if time.time() - t0 > a.budget:
                print("budget spent", flush=True)
                break
            mk = importlib.import_module(f"memtool.kernels.{mod}")
            PREP.setdefault(mod, mk.prep_activations)
            mk.prep_activations = _memo(PREP[mod]) if alone else PREP[mod]
            kw = dict(kw)
            bm, bn, split, nw = kw.pop("bm"), kw.pop("bn"), kw.pop("split"), kw.pop("num_warps")
            try:
                err, t = checked_time_us(lambda W: mk.launch(x, W, bm, bn, split, nw, **kw), w, ref, cps)
            except Exception as e:  # noqa: BLE001
                print(f"  q{bits} {label}: FAIL {e!r}"[:300], flush=True)
                continue
            nreg = getattr(mk.LAST.get("kernel"), "n_regs", None)
            print(f"  q{bits} {label:32s} {t:6.1f} us {t16 / t:.2f}x regs={nreg} err={err:.1e}", flush=True)
            rows.append(dict(n=n, k=k, m=m, bits=bits, label=label, us=t, fp16_us=t16, speedup=t16 / t, err=err,
                             regs=nreg, prep_us=tp))  # fmt: skip
        for mod, prep in PREP.items():  # the modules' own prep again (the next case times it alone)
            importlib.import_module(f"memtool.kernels.{mod}").prep_activations = prep
        del cps
        torch.cuda.empty_cache()
    save_json(a.out, "ab.json", {"device": props.name, "rows": rows})
    print(f"done in {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
