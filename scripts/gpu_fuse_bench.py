"""The seven projections of a Llama-2-7B-shaped decoder layer as LUT linears, separate vs fused (GPU).

    export PYTHONPATH=$PWD; python scripts/gpu_fuse_bench.py [--bits 3,4] [--ms 1,16] [--out DIR]

q/k/v (4096 -> 3 x 4096) and gate/up (4096 -> 2 x 11008) read the same activations, so
``memtool.compress.fuse.fuse_lut_projections`` computes each group with one LUT kernel (one prep, one launch)
instead of three / two. Random affine g128 weights; the layer's seven calls (q, k, v, o, gate, up, down) are timed
as one CUDA graph over copies of the layer that together exceed 3x the L2, after a check that the fused outputs
equal the separate ones; cuBLAS fp16 of the same seven projections, separate and fused the same way, in the same
process for reference.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from memtool.compress.fuse import fuse_lut_projections  # noqa: E402
from memtool.compress.modules import LutLinear  # noqa: E402
from memtool.kernels.lut_types import LutWeight  # noqa: E402
from scripts.gpu_lut_bench import graph_time_us, n_copies, save_json  # noqa: E402

H, I = 4096, 11008
SHAPES = {"q_proj": (H, H), "k_proj": (H, H), "v_proj": (H, H), "o_proj": (H, H), "gate_proj": (I, H),
          "up_proj": (I, H), "down_proj": (H, I)}  # fmt: skip


class Layer(nn.Module):
    def forward(self, x, xi):
        return ([self.q_proj(x), self.k_proj(x), self.v_proj(x), self.o_proj(x)],
                [self.gate_proj(x), self.up_proj(x), self.down_proj(xi)])  # fmt: skip


def random_lut_linear(n: int, k: int, bits: int, gen: torch.Generator, spread: float = 0.01) -> LutLinear:
    """A LutLinear [n, k] of random affine g128 codes made on ``gen``'s device (scales ~ spread, biases ~ spread)."""
    dev = gen.device
    codes = torch.randint(0, 2**bits, (n, k), device=dev, generator=gen, dtype=torch.int32)
    w = LutWeight.from_codes(codes, "affine", bits, 128,
                             scale=torch.rand(n, k // 128, device=dev, generator=gen) * spread + 1e-3,
                             bias=torch.randn(n, k // 128, device=dev, generator=gen) * spread)  # fmt: skip
    return LutLinear.from_lut_weight(w)


def lut_layer(bits: int, dev, seed: int) -> Layer:
    layer = Layer()
    gen = torch.Generator(device=dev).manual_seed(seed)
    for name, (n, k) in SHAPES.items():
        setattr(layer, name, random_lut_linear(n, k, bits, gen))
    return layer


def fp16_layer(dev) -> Layer:
    layer = Layer()
    for name, (n, k) in SHAPES.items():
        setattr(layer, name, nn.Linear(k, n, bias=False, device=dev, dtype=torch.float16))
    return layer


class FusedFp16(nn.Module):
    """The fp16 reference with the same fusion (q/k/v and gate/up as one nn.Linear each, split after)."""

    def __init__(self, dev):
        super().__init__()
        self.qkv = nn.Linear(H, 3 * H, bias=False, device=dev, dtype=torch.float16)
        self.o = nn.Linear(H, H, bias=False, device=dev, dtype=torch.float16)
        self.gu = nn.Linear(H, 2 * I, bias=False, device=dev, dtype=torch.float16)
        self.down = nn.Linear(I, H, bias=False, device=dev, dtype=torch.float16)

    def forward(self, x, xi):
        return list(self.qkv(x).split(H, -1)) + [self.o(x)], list(self.gu(x).split(I, -1)) + [self.down(xi)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bits", default="3,4")
    ap.add_argument("--ms", default="1,16")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    a = ap.parse_args()
    dev = torch.device("cuda")
    props = torch.cuda.get_device_properties(0)
    print(f"device {props.name}", flush=True)
    rows = []
    for bits in (int(v) for v in a.bits.split(",")):
        one = sum(n * k for n, k in SHAPES.values()) * bits / 8
        layers = [lut_layer(bits, dev, s) for s in range(n_copies(int(one), props.L2_cache_size))]
        for m in (int(v) for v in a.ms.split(",")):
            x = torch.randn(m, H, device=dev, dtype=torch.float16)
            xi = torch.randn(m, I, device=dev, dtype=torch.float16)
            t_sep = graph_time_us([lambda L=L: L(x, xi) for L in layers])
            ref = [y.clone() for ys in layers[0](x, xi) for y in ys]
            fused = [fuse_lut_projections(L) for L in layers]
            out = [y for ys in layers[0](x, xi) for y in ys]
            err = max(((o.float() - r.float()).norm() / r.float().norm()).item() for o, r in zip(out, ref))
            t_fused = graph_time_us([lambda L=L: L(x, xi) for L in layers])
            dense = [fp16_layer(dev) for _ in range(n_copies(sum(n * k for n, k in SHAPES.values()) * 2,
                                                             props.L2_cache_size))]  # fmt: skip
            dense_f = [FusedFp16(dev) for _ in dense]
            with torch.no_grad():
                t16 = graph_time_us([lambda L=L: L(x, xi) for L in dense])
                t16f = graph_time_us([lambda L=L: L(x, xi) for L in dense_f])
            del dense, dense_f
            r = dict(bits=bits, m=m, separate_us=t_sep, fused_us=t_fused, fp16_us=t16, fp16_fused_us=t16f,
                     max_rel_diff=err, groups_fused=len(fused[0]))  # fmt: skip
            rows.append(r)
            print(f"q{bits} M={m}: seven projections separate {t_sep:.1f} us, fused {t_fused:.1f} us "
                  f"({t_sep / t_fused:.2f}x); cuBLAS fp16 separate {t16:.1f} us, fused {t16f:.1f} us (LUT vs fp16, "
                  f"separate {t16 / t_sep:.2f}x, fused {t16f / t_fused:.2f}x); fused vs separate max rel diff "
                  f"{err:.1e}", flush=True)  # fmt: skip
            layers = [lut_layer(bits, dev, s) for s in range(len(layers))]  # separate again for the next M
        del layers
        torch.cuda.empty_cache()
    save_json(a.out, "fuse_bench.json", {"device": props.name, "rows": rows})


if __name__ == "__main__":
    main()
