"""Fast affine GEMV (memtool/kernels/lut_gemv.py) under TRITON_INTERPRET against a float64 reference.

fp16 activations: relative error < 1e-3; bf16: < 1e-2. Outputs are poisoned (NaN) before each launch.
"""

import os

import pytest
import torch

from memtool.kernels import lut_gemv as LG
from memtool.kernels import lut_layout as L
from memtool.kernels import lut_triton as LT
from memtool.kernels.lut_ref import lut_matmul_f64

from .helpers import rand_weight, rel_err

assert os.environ.get("TRITON_INTERPRET") == "1"

TOL = {torch.float16: 1e-3, torch.bfloat16: 1e-2}


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_decode_plan_recovers_every_code(bits):
    """The kernel's lop3 decode (emulated with torch integer ops) gives back the packed codes exactly."""
    codes = torch.randint(0, 2**bits, (70, 203), dtype=torch.uint8)  # ragged: 70 rows, 6.3 units
    q = L.pack_codes(codes, bits)
    assert torch.equal(LG.emulate_decode(q, bits, 203)[:, :203], codes.double())


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_targets_stay_in_the_precision_window(bits):
    for fields, t in LG.decode_plan(bits):
        assert LG.LO_TARGET <= t <= 23 - bits  # the code's lowest bit >= 12: >= 12 exact bits per product
        for word, rot, shift, width in fields:
            assert 0 <= word < bits and 0 <= rot < 32 and shift + width <= 23


def test_prep_activations_match_torch():
    bits, k, bu = 3, 203, 4
    x = torch.randn(2, k, dtype=torch.float16)
    xt, xb, xs = LG.prep_activations(x, bits, bu)
    ku = L.num_units(k)
    nt = -(-ku // bu)
    xp = torch.zeros(2, nt * bu * 32, dtype=torch.float64)
    xp[:, :k] = x.double()
    units = xp.view(2, nt * bu, 32)
    base = torch.tensor(LG.slot_bases(bits), dtype=torch.float64)
    want_xt = (units * base).view(2, nt, bu, 32).transpose(2, 3)
    assert torch.equal(xt.double(), want_xt)
    assert torch.allclose(xs.double(), units.sum(-1), rtol=1e-6, atol=1e-6)
    assert torch.allclose(xb.double(), (units * base).sum(-1), rtol=1e-6, atol=1e-3)


CASES = [
    # bits, n, k, g, bn, bu, split, stages, m
    (3, 40, 203, 64, 32, 4, 2, 0, 1),  # ragged N and K, groups of 64 (two per tile)
    (3, 130, 1100, 128, 64, 4, 3, 2, 1),  # three row blocks, the last short; pipelined loads
    (4, 64, 512, 128, 64, 4, 2, 0, 3),  # FULL tiles (N % 64 == 0, KU % 4 == 0), EVEN tiles, M = 3
    (4, 64, 512, -1, 64, 8, 1, 2, 1),  # per-channel, 8 units per tile (two layout tiles), no split
    (2, 70, 300, 32, 128, 4, 2, 0, 1),  # groups of 32 (one unit): per-element parameters
    (8, 33, 150, 256, 32, 4, 1, 0, 2),  # 8-bit, one group bigger than K
]


@pytest.mark.parametrize("bits,n,k,g,bn,bu,split,stages,m", CASES)
@pytest.mark.parametrize("dt", [torch.float16, torch.bfloat16])
def test_kernel_matches_reference(bits, n, k, g, bn, bu, split, stages, m, dt):
    w = rand_weight("affine", bits, n, k, g, seed=bits * 100 + n)
    x = torch.randn(m, k).to(dt)
    out = torch.full((m, n), float("nan"), dtype=dt)
    y = LG.launch_affine(x, w, bn, bu, split, 4, stages, out=out)
    assert y is out and not torch.isnan(y).any(), "unwritten output"
    assert rel_err(y, lut_matmul_f64(x, w)) < TOL[dt]


def test_dispatch_offers_the_fast_path_for_affine_small_m():
    w = rand_weight("affine", 3, 64, 256, 128, seed=1)
    cands = LT.candidates(1, 64, 256, w, torch.device("cpu"))
    assert cands[0].path == "fast"
    assert all(c.path != "fast" for c in LT.candidates(32, 64, 256, w, torch.device("cpu")))
    bcq = rand_weight("bcq", 3, 64, 256, 128, seed=1)
    assert all(c.path != "fast" for c in LT.candidates(1, 64, 256, bcq, torch.device("cpu")))
    x = torch.randn(1, 256, dtype=torch.float16)
    y = LT.launch(x, w, cands[0])
    assert rel_err(y, lut_matmul_f64(x, w)) < 1e-3


def test_rejects_other_kinds():
    w = rand_weight("table", 3, 8, 64, 32, seed=1)
    with pytest.raises(ValueError):
        LG.launch_affine(torch.randn(1, 64, dtype=torch.float16), w, 32, 4, 1, 4)
