"""The Hopper wgmma kernel's offline parts (memtool/kernels/lut_wgmma.py), on the CPU.

The Gluon kernel itself needs a Hopper GPU (scripts/gpu_lut_bench.py checks it there against float64);
here: its decode plan and k permutation, emulated with torch, must give back exactly the packed codes of
every (row, k), and the activation prep kernel (plain Triton, interpreted) must match torch.
"""

import os

import pytest
import torch

from memtool.kernels import lut_layout as L
from memtool.kernels import lut_wgmma as WG

assert os.environ.get("TRITON_INTERPRET") == "1"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("bits", [2, 3, 4])
def test_decoded_tile_in_kprime_order_is_the_codes(bits, dtype):
    """emulate_tile (the kernel's shifts, lop3 masks, magic-number FMAs, join tree and permutation) on the
    words of a 128-row x 256-k weight == unpack_codes permuted by tile_perm, for every tile."""
    n, k = 128, 256
    codes = torch.randint(0, 2**bits, (n, k), dtype=torch.uint8)
    q = L.pack_codes(codes, bits)
    ku = L.num_units(k)
    words = q.view(-1)[L.word_offsets(n, bits, ku)].to(torch.int64)  # [n, bits, ku]
    perm = torch.tensor(WG.tile_perm(bits))
    for t in range(ku // 4):
        got = WG.emulate_tile(words[:, :, 4 * t : 4 * t + 4], bits, dtype)
        want = codes[:, 128 * t : 128 * (t + 1)][:, perm].double()
        assert torch.equal(got, want), f"tile {t}"


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_tile_perm_is_a_permutation(bits):
    assert sorted(WG.tile_perm(bits)) == list(range(128))


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("mantissa", [7, 10])
def test_fields_fit_the_mantissa(bits, mantissa):
    for word, sb, f in WG.pair_plan(bits, mantissa):
        assert word == -1 or (0 <= word < bits and f + bits <= mantissa and sb + f < 16)


def test_shifts_are_shared():
    """fp16: one shift per word serves its later pairs (3 bits: 9; 4 bits: 8); bf16 needs more."""
    assert {sb for w, sb, f in WG.pair_plan(3, 10) if w >= 0} == {0, 9}
    assert {sb for w, sb, f in WG.pair_plan(4, 10) if w >= 0} == {0, 8}
    assert len({sb for w, sb, f in WG.pair_plan(4, 7)}) > 2


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_prep_activations_match_torch(dtype):
    m, k, bits = 3, 384, 3
    x = torch.randn(m, k).to(dtype)
    xp, xs = WG.prep_activations(x, bits)
    perm = torch.tensor(WG.tile_perm(bits))
    want = torch.cat([x[:, 128 * t : 128 * (t + 1)][:, perm] for t in range(k // 128)], 1)
    assert torch.equal(xp, want)
    torch.testing.assert_close(xs, x.float().view(m, -1, 128).sum(-1), rtol=1e-5, atol=1e-5)


def test_supports_needs_a_hopper_gpu_and_whole_tiles():
    from .helpers import rand_weight

    w = rand_weight("affine", 3, 64, 256, 128)
    assert not WG.supports(w, 1, 64, 256, torch.device("cpu"))
