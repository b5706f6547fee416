"""The Hopper wgmma kernel's offline parts (memtool/kernels/lut_wgmma.py, lut_wgmma_plan.py), on the CPU.

The Gluon kernel itself needs a Hopper GPU (scripts/gpu_lut_bench.py checks it there against float64);
here: its decode plan and k permutation, emulated with torch, must give back exactly the packed codes of
every (row, k), the activation prep kernel (plain Triton, interpreted) must match torch, and the raw
decode's algebra (magic-number codes against prescaled activations, corrected in the epilogue) must give
the float64 product.
"""

import os

import pytest
import torch

from memtool.kernels import lut_layout as L
from memtool.kernels import lut_wgmma as WG
from memtool.kernels import lut_wgmma_plan as WP

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
    perm = torch.tensor(WP.tile_perm(bits))
    for t in range(ku // 4):
        got = WP.emulate_tile(words[:, :, 4 * t : 4 * t + 4], bits, dtype)
        want = codes[:, 128 * t : 128 * (t + 1)][:, perm].double()
        assert torch.equal(got, want), f"tile {t}"


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_tile_perm_is_a_permutation(bits):
    assert sorted(WP.tile_perm(bits)) == list(range(128))


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("mantissa", [7, 10])
def test_fields_fit_the_mantissa(bits, mantissa):
    for word, sb, f in WP.pair_plan(bits, mantissa):
        assert word == -1 or (0 <= word < bits and f + bits <= mantissa and sb + f < 16)


def test_shifts_are_shared():
    """fp16: one shift per word serves its later pairs (3 bits: 9; 4 bits: 8); bf16 needs more."""
    assert {sb for w, sb, f in WP.pair_plan(3, 10) if w >= 0} == {0, 9}
    assert {sb for w, sb, f in WP.pair_plan(4, 10) if w >= 0} == {0, 8}
    assert len({sb for w, sb, f in WP.pair_plan(4, 7)}) > 2


def _away_from_zero(m, k, dtype):
    """Activations with |x| >= 0.02: scaled by up to 2^-8 (2-bit fields in fp16) they stay normal fp16
    numbers, so the prep's scaling is exact."""
    x = torch.randn(m, k)
    return (x.sign() * (0.02 + x.abs())).to(dtype)


@pytest.mark.parametrize("raw", [False, True])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_prep_activations_match_torch(dtype, raw):
    """xp [MB, NT + pad, BM, 128]: row block b, tile t = rows b*BM.. of x in the k' order of the tile (times 2^-f
    per column when raw); xs [MB, NT + pad, max(BM, 32), 2] = (tile sum of x, magic * tile sum of xp) in fp32;
    zeros past row M and past tile NT."""
    m, k, bits, bm = 11, 384, 3, 8
    x = _away_from_zero(m, k, dtype)
    xp, xs = WP.prep_activations(x, bits, raw=raw, bm=bm)
    nt, ntp = k // 128, k // 128 + WP.PAD_TILES
    assert xp.shape == (2, ntp, bm, 128)
    perm = torch.tensor(WP.tile_perm(bits))
    want = torch.zeros(2 * bm, ntp, 128, dtype=torch.float64)  # [padded rows, tiles, k']
    want[:m, :nt] = x.double().view(m, nt, 128)[:, :, perm]
    if raw:
        shift = torch.tensor(WP.tile_shift(bits, WP.MANTISSA[dtype]), dtype=torch.float64)
        want = want * 2.0**-shift
    assert torch.equal(xp.double(), want.view(2, bm, ntp, 128).transpose(1, 2))
    if raw:
        assert xs.shape == (2, ntp, 32, 2)
        sums = xs[:, :, :bm].transpose(1, 2).reshape(2 * bm, ntp, 2)  # [padded rows, tiles, 2]
        assert not sums[m:].any() and not sums[:, nt:].any()
        torch.testing.assert_close(sums[:m, :nt, 0], x.float().view(m, nt, 128).sum(-1), rtol=1e-5, atol=1e-5)
        magic = WP.MAGIC[dtype]
        torch.testing.assert_close(sums[:m, :nt, 1], magic * want[:m, :nt].float().sum(-1), rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("bits", [2, 3, 4])
def test_raw_decode_and_epilogue_give_the_product(bits, dtype):
    """The raw kernel's algebra in float64: per tile, D = (magic + codes * 2^f) . xp (what wgmma computes from
    the raw decode and the prepped activations); y = sum_t s_t * (D_t - magic * sum(xp_t)) + b_t * sum(x_t)
    equals the float64 reference product of the packed weight."""
    from memtool.kernels.lut_ref import lut_matmul_f64

    from .helpers import rand_weight

    n, k, m = 64, 384, 2
    w = rand_weight("affine", bits, n, k, 128)
    x = _away_from_zero(m, k, dtype)
    xp, xs = WP.prep_activations(x, bits)  # one row block of m rows
    ku = L.num_units(k)
    words = w.qweight.view(-1)[L.word_offsets(n, bits, ku)].to(torch.int64)  # [n, bits, ku]
    y = torch.zeros(m, n, dtype=torch.float64)  # with the sums in float64: the identity, exact
    y32 = torch.zeros(m, n, dtype=torch.float64)  # with the prep's fp32 sums, as the kernel does
    for t in range(k // 128):
        a = WP.emulate_tile(words[:, :, 4 * t : 4 * t + 4], bits, dtype, raw=True)  # [n, 128]
        xt = xp[0, t].double()
        d = xt @ a.T  # [m, n]
        s, b = w.scales[:, t].double(), w.biases[:, t].double()
        xsum = x[:, 128 * t : 128 * (t + 1)].double().sum(1, keepdim=True)
        y += s * (d - WP.MAGIC[dtype] * xt.sum(1, keepdim=True)) + b * xsum
        y32 += s * (d - xs[0, t, :m, 1, None].double()) + b * xs[0, t, :m, 0, None].double()
    ref = lut_matmul_f64(x, w)
    assert ((y - ref).norm() / ref.norm()).item() < 1e-12
    # the magic term cancels in fp32 (|magic * sum(xp)| >> |codes . x|): well inside the kernel's 1e-3 bound
    assert ((y32 - ref).norm() / ref.norm()).item() < 3e-5


@pytest.mark.parametrize("group_size", [128, 256, -1])
def test_tile_params_are_the_scale_and_bias_bits_tile_major(group_size):
    """[N/64, NT + pad, 64]: tile t of row block b holds the s | b << 16 fp16 bits of its group for the 64 rows;
    zeros in the padding tiles."""
    from .helpers import rand_weight

    w = rand_weight("affine", 3, 128, 512, group_size)
    t = WP.tile_params(w)
    nt = 4
    assert t.shape == (2, nt + WP.PAD_TILES, 64) and t.dtype == torch.int32 and WP.tile_params(w) is t  # cached
    assert not t[:, nt:].any()
    lo = (t[:, :nt] & 0xFFFF).to(torch.int16).view(torch.float16)
    hi = ((t[:, :nt] >> 16) & 0xFFFF).to(torch.int16).view(torch.float16)
    grp = [min(128 * i // w.group_size, w.groups - 1) for i in range(nt)]  # the group of each tile (explicit)
    assert torch.equal(lo, w.scales.view(2, 64, -1)[:, :, grp].transpose(1, 2))
    assert torch.equal(hi, w.biases.view(2, 64, -1)[:, :, grp].transpose(1, 2))


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

    asm = WP._fma_asm_text(f, bf16, False)
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
    for bn, nw in ((128, 2), (256, 4), (64, 8), (128, 4)):
        with pytest.raises(ValueError, match="warps|rows a warp"):
            WG.launch(x, w, 8, bn, 1, nw)


def test_launch_falls_back_to_stream_order_where_programmatic_launch_fails(monkeypatch):
    """A driver that rejects the programmatic dependent launch: the kernel is launched again without it (the
    variant that does not wait on the grid dependency), and later launches on that device skip it."""
    from .helpers import rand_weight

    calls = []

    class FakeKernel:
        def __getitem__(self, grid):
            def run(*args, **kw):
                calls.append((kw["PDL"], kw.get("launch_pdl", False)))
                if kw.get("launch_pdl"):
                    raise RuntimeError("programmatic launch not supported")
                return "compiled"

            return run

    monkeypatch.setattr(WG, "_raw_kernel", FakeKernel(), raising=False)
    monkeypatch.setattr(WG, "_NO_PDL", set())
    w = rand_weight("affine", 3, 64, 256, 128)
    x = torch.randn(1, 256, dtype=torch.float16)
    WG.launch(x, w, 8, 64, 1, 4)
    assert calls == [(True, True), (False, False)] and WG._NO_PDL == {x.device.index}
    WG.launch(x, w, 8, 64, 1, 4)
    assert calls[2:] == [(False, False)]
