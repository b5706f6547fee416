"""LUT formats: config validation, exact uniform->BCQ, dequantize vs an explicit per-group loop, bits accounting."""

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from memtool.compress.lut import LutConfig, LutQuantized, bits_per_weight, quantize_weight
from memtool.errors import UsageError

METHODS = ["uniform", "bcq", "nf"]


def loop_dequant(q: LutQuantized) -> torch.Tensor:
    """Independent reference: decode every weight with explicit loops over rows and groups (float64)."""
    N, K = q.codes.shape
    g = K if q.group_size == -1 else q.group_size
    out = torch.empty(N, K, dtype=torch.float64)
    for n in range(N):
        for k in range(math.ceil(K / g)):
            for j in range(k * g, min((k + 1) * g, K)):
                c = int(q.codes[n, j])
                if q.method == "uniform":
                    v = float(q.scale[n, k]) * (c - float(q.zero[n, k]))
                elif q.method == "bcq":
                    v = float(q.offset[n, k])
                    for i in range(q.bits):
                        v += float(q.alpha[n, k, i]) * (2 * ((c >> i) & 1) - 1)
                else:
                    v = float(q.scale[n, k]) * float(q.table[c])
                out[n, j] = v
    return out


@pytest.mark.parametrize("kw, msg", [
    (dict(bits=7), "bits must be one of 2, 3, 4, 8"),
    (dict(group_size=0), "group size must be one of"),
    (dict(group_size=100), "group size must be one of"),
    (dict(method="kmeans"), "unknown method 'kmeans'"),
    (dict(method="nf", sym=True), "sym applies only"),
])
def test_bad_config(kw, msg):
    with pytest.raises(UsageError, match=msg) as e:
        LutConfig(**kw)
    assert "\n" not in str(e.value)


def test_bad_weight_shape():
    with pytest.raises(UsageError, match="2-D weight"):
        quantize_weight(torch.randn(4, 4, 4), LutConfig())


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("sym", [False, True])
def test_uniform_to_bcq_exact(bits, sym):
    w = torch.randn(16, 200, dtype=torch.float64) * 0.05 + 0.01
    q = quantize_weight(w, LutConfig(bits, 64, "uniform", sym=sym), torch.float64)
    b = q.to_bcq()
    assert b.method == "bcq" and b.alpha.shape == (16, 4, bits) and torch.equal(b.codes, q.codes)
    torch.testing.assert_close(b.dequantize(), q.dequantize(), rtol=0, atol=1e-14)
    torch.testing.assert_close(b.to_lut(), q.to_lut(), rtol=0, atol=1e-14)
    # alpha_i = s 2^(i-1), offset = s((2^q-1)/2 - z)
    torch.testing.assert_close(b.alpha[..., 0], q.scale / 2)
    torch.testing.assert_close(b.offset, q.scale * ((2**bits - 1) / 2 - q.zero))


@settings(max_examples=25, deadline=None)
@given(bits=st.sampled_from([2, 3, 4]), g=st.sampled_from([32, 64, 128, -1]), method=st.sampled_from(METHODS),
       N=st.integers(1, 5), K=st.integers(1, 300), seed=st.integers(0, 2**31 - 1))
def test_dequantize_matches_loop(bits, g, method, N, K, seed):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(N, K, generator=gen, dtype=torch.float64) * torch.rand(N, 1, generator=gen, dtype=torch.float64)
    q = quantize_weight(w, LutConfig(bits, g, method, bcq_iters=3), torch.float64)
    G = 1 if g == -1 else math.ceil(K / g)
    assert q.codes.dtype == torch.uint8 and q.codes.shape == (N, K) and int(q.codes.max()) < 2**bits
    assert q.n_groups == G and q.to_lut().shape == (N, G, 2**bits)
    deq = q.dequantize()
    torch.testing.assert_close(deq, loop_dequant(q), rtol=1e-12, atol=1e-12)
    # round to nearest: every weight decodes to the nearest entry of its group's table
    lut = q.to_lut()
    gi = torch.arange(K) // (K if g == -1 else g)
    dist = (w[:, :, None] - lut[:, gi, :]).abs()
    err = (w - deq).abs()
    assert torch.all(err <= dist.min(-1).values + 1e-9)


def test_ragged_default_shape():
    w = torch.randn(64, 576)
    for m in METHODS:
        q = quantize_weight(w, LutConfig(3, 128, m))
        assert q.scale.shape == (64, 5) if m != "bcq" else q.alpha.shape == (64, 5, 3)
        rel = ((q.dequantize() - w).norm() / w.norm()).item()
        assert rel < 0.25


def test_bcq_fit_beats_rtn_at_3_bits():
    torch.manual_seed(1)
    w = torch.randn(256, 512)
    rtn = quantize_weight(w, LutConfig(3, 128, "uniform"))
    bcq = quantize_weight(w, LutConfig(3, 128, "bcq"))
    e_rtn = (rtn.dequantize() - w).pow(2).sum(-1)
    e_bcq = (bcq.dequantize() - w).pow(2).sum(-1)
    assert torch.all(e_bcq <= e_rtn * (1 + 1e-5))  # per row, never worse
    assert e_bcq.sum() < 0.85 * e_rtn.sum()  # and clearly better overall


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_nf_table_structure(bits):
    from memtool.compress.lut_nf import nf_table

    t = nf_table(bits, torch.float64)
    P = 2 ** (bits - 1)
    assert t.shape == (2**bits,)
    assert torch.all(t[1:] > t[:-1])
    assert (t == 0).sum() == 1 and (t > 0).sum() == P and (t < 0).sum() == P - 1
    assert t[0] == -1 and t[-1] == 1
    # normal-quantile spacing: steps grow toward the tails on each side
    pos = t[t > 0]
    if len(pos) > 2:
        assert torch.all(pos[1:] - pos[:-1] >= (pos[1:] - pos[:-1])[0] - 1e-12)


def test_nf_uses_absmax_scale():
    w = torch.randn(8, 256, dtype=torch.float64)
    q = quantize_weight(w, LutConfig(4, 64, "nf"), torch.float64)
    torch.testing.assert_close(q.scale, w.abs().reshape(8, 4, 64).amax(-1))
    # the absmax element of each group is reproduced exactly
    deq = q.dequantize().reshape(8, 4, 64)
    idx = w.abs().reshape(8, 4, 64).argmax(-1, keepdim=True)
    torch.testing.assert_close(deq.gather(-1, idx), w.reshape(8, 4, 64).gather(-1, idx))


def test_bits_per_weight():
    assert bits_per_weight(3, 128, "uniform", (576, 576)) == pytest.approx(3 + 5 * 32 / 576)
    assert bits_per_weight(4, 128, "uniform", (4096, 4096)) == pytest.approx(4.25)
    assert bits_per_weight(3, 128, "bcq", (4096, 4096)) == pytest.approx(3.5)
    assert bits_per_weight(4, -1, "nf", (10, 100)) == pytest.approx(4 + 16 / 100 + 16 * 16 / 1000)
    q = quantize_weight(torch.randn(4, 100), LutConfig(2, 32, "uniform"))
    assert q.bits_per_weight() == pytest.approx(2 + 4 * 32 / 100)


def test_params_to_half_and_vectorized_speed():
    import time

    w = torch.randn(1024, 1024)
    t = time.perf_counter()
    q = quantize_weight(w, LutConfig(4, 128, "uniform"))
    assert time.perf_counter() - t < 5
    h = q.params_to(torch.float16)
    assert h.scale.dtype == torch.float16 and h.codes is q.codes
    torch.testing.assert_close(h.dequantize(torch.float32), q.dequantize(), rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("method", ["uniform", "nf"])
def test_clip_search_never_worse(method):
    w = torch.randn(32, 300, dtype=torch.float64) * torch.rand(32, 1, dtype=torch.float64)
    plain = quantize_weight(w, LutConfig(3, 64, method), torch.float64)
    clip = quantize_weight(w, LutConfig(3, 64, method, clip_steps=16), torch.float64)
    e0 = ((plain.dequantize() - w) ** 2).sum(-1)
    e1 = ((clip.dequantize() - w) ** 2).sum(-1)
    assert torch.all(e1 <= e0 + 1e-12) and e1.sum() < 0.9 * e0.sum()
    torch.testing.assert_close(clip.dequantize(), loop_dequant(clip), rtol=1e-12, atol=1e-12)
