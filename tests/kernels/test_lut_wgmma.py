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
    if WG.HAVE_GLUON and torch.cuda.is_available() and torch.cuda.get_device_capability()[0] == 9:
        dev = torch.device("cuda")
        assert WG.supports(w, 1, 64, 256, dev) and not WG.supports(w, 1, 64, 256, dev, torch.float32)
        assert not WG.supports(w, 1, 96, 256, dev) and not WG.supports(w, 1, 64, 200, dev)


@pytest.mark.parametrize("bf16", [False, True])
@pytest.mark.parametrize("f", range(8))
def test_fma_constants_undo_the_magic_number(f, bf16):
    """The two packed constants of the decode FMA are 2^-f and -magic*2^-f in the activation dtype, so
    ``(magic + c*2^f) * 2^-f - magic*2^-f == c`` for every code (checked in float64 on the decoded patterns)."""
    import re

    asm = WG._fma_asm_text(f, bf16, False)
    s2, c2 = re.findall(r"mov\.b32 [sc], 0x([0-9a-f]{8})", asm)
    dt = torch.bfloat16 if bf16 else torch.float16
    def val(h):  # the low 16-bit pattern of h as a dt number
        return torch.tensor([int(h[4:], 16)], dtype=torch.int32).to(torch.int16).view(dt).double().item()

    assert s2[:4] == s2[4:] and c2[:4] == c2[4:]
    magic = 128.0 if bf16 else 1024.0
    assert val(s2) == 2.0**-f and val(c2) == -magic * 2.0**-f
    mb = 7 if bf16 else 10
    for c in range(0, 1 << max(0, mb - f)):
        assert (magic + c * 2**f) * val(s2) + val(c2) == c


def test_dispatcher_offers_only_wgmma_where_it_applies_and_falls_back(monkeypatch):
    """Where lut_wgmma.supports says yes the tuner times only wgmma configurations; if none of them builds
    (an incompatible Gluon), the Triton paths are tuned instead and the result is still right."""
    from memtool.kernels import lut_triton as LT
    from memtool.kernels.lut_ref import lut_matmul_f64

    from .helpers import rand_weight, rel_err

    w = rand_weight("affine", 3, 64, 256, 128)
    x = torch.randn(2, 256, dtype=torch.float16)
    monkeypatch.setattr(WG, "supports", lambda *a: True)
    cands = LT.candidates(2, 64, 256, w, x.device)
    assert cands and {c.path for c in cands} == {"wgmma"}
    monkeypatch.setenv("MEMTOOL_LUT_ALL_PATHS", "1")
    assert {c.path for c in LT.candidates(2, 64, 256, w, x.device)} > {"wgmma"}
    monkeypatch.delenv("MEMTOOL_LUT_ALL_PATHS")

    def broken(*a, **k):
        raise RuntimeError("no Gluon here")

    monkeypatch.setattr(WG, "launch", broken)
    monkeypatch.setattr(LT, "_TUNED", {})
    cfg = LT.choose(x, w)
    assert cfg.path != "wgmma"
    assert rel_err(LT.launch(x, w, cfg), lut_matmul_f64(x, w)) < 1e-3


def test_row_bases_cover_the_rows_the_warps_do_not():
    """Register bases of the word layout: row + 8, then every row bit above 16 * num_warps up to bn."""
    assert WG.row_bases(64, 4) == ((8, 0),)
    assert WG.row_bases(128, 4) == ((8, 0), (64, 0))
    assert WG.row_bases(128, 8) == ((8, 0),)
    assert WG.row_bases(256, 8) == ((8, 0), (128, 0))


def test_launch_refuses_warps_that_cannot_cover_the_rows():
    from .helpers import rand_weight

    w = rand_weight("affine", 3, 256, 256, 128)
    x = torch.randn(1, 256, dtype=torch.float16)
    for bn, nw in ((128, 2), (256, 4), (64, 8)):
        with pytest.raises(ValueError, match="warps"):
            WG.launch(x, w, 8, bn, 1, nw)
