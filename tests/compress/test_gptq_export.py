"""Uniform artifacts -> GPTQ tensors: bit-stream packing, exact round trip, refusals."""

import json

import pytest
import torch

from memtool.compress import formats
from memtool.compress.artifact import read_artifact
from memtool.compress.gptq_export import convert_to_gptq, pack_stream, to_gptq, unpack_stream
from memtool.compress.lut import LutConfig, quantize_weight
from memtool.compress.quantize import QuantizeSpec, quantize_model
from memtool.errors import UsageError


def ref_unpack(words: torch.Tensor, bits: int, R: int) -> list[list[int]]:
    """Independent reference: read value r of column c bit by bit from the little-endian word stream."""
    w = (words.to(torch.int64) & 0xFFFFFFFF).tolist()
    C = len(w[0])
    out = [[0] * C for _ in range(R)]
    for c in range(C):
        for r in range(R):
            v = 0
            for b in range(bits):
                pos = r * bits + b
                v |= ((w[pos // 32][c] >> (pos % 32)) & 1) << b
            out[r][c] = v
    return out


def ref_dequantize(t, bits, K, v1=True):
    """GPTQ dequantization with the reference unpacker, float64 [N, K]."""
    codes = ref_unpack(t["qweight"], bits, K)  # [K][N]
    N = len(codes[0])
    G = t["scales"].shape[0]
    zT = ref_unpack(t["qzeros"].T.contiguous(), bits, N)  # [N][G]
    s = t["scales"].double()
    out = torch.empty(N, K, dtype=torch.float64)
    for k in range(K):
        gi = int(t["g_idx"][k])
        for n in range(N):
            z = zT[n][gi] + (1 if v1 else 0)
            out[n, k] = s[gi, n] * (codes[k][n] - z)
    return out


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_pack_stream_matches_reference(bits):
    R, C = 64, 5
    v = torch.randint(0, 2**bits, (R, C), generator=torch.Generator().manual_seed(bits))
    words = pack_stream(v, bits)
    assert words.dtype == torch.int32 and words.shape == (R * bits // 32, C)
    assert ref_unpack(words, bits, R) == v.tolist()
    assert torch.equal(unpack_stream(words, bits, R), v)


def test_three_bit_codes_straddle_words():
    v = torch.zeros(32, 1, dtype=torch.int64)
    v[10, 0] = 7  # bits 30..32: two bits in word 0, one in word 1
    w = pack_stream(v, 3).to(torch.int64) & 0xFFFFFFFF
    assert w[:, 0].tolist() == [0b11 << 30, 1, 0]


@pytest.mark.parametrize("bits,g", [(2, 32), (3, 32), (3, 64), (4, 128), (8, -1)])
@pytest.mark.parametrize("fmt", ["gptq", "gptq_v2"])
def test_round_trip_exact(bits, g, fmt):
    N, K = 64, 128
    w = torch.randn(N, K, generator=torch.Generator().manual_seed(bits * 7 + K))
    q = quantize_weight(w, LutConfig(bits=bits, group_size=g))
    p = formats.get("lut").pack("x", q)
    lw = formats.get("lut").unpack(p)
    t = to_gptq(lw, "x", fmt)
    gg = K if g == -1 else g
    assert t["qweight"].shape == (K * bits // 32, N) and t["qzeros"].shape == (K // gg, N * bits // 32)
    assert t["scales"].dtype == torch.float16 and t["scales"].shape == (K // gg, N)
    assert t["g_idx"].tolist() == [k // gg for k in range(K)]
    deq = ref_dequantize(t, bits, K, v1=fmt == "gptq")
    # exact: same codes, same fp16 scales, the quantizer's integer zeros
    s16 = q.scale.half().double()
    exact = s16.repeat_interleave(gg, 1)[:, :K] * (q.codes.double() - q.zero.double().repeat_interleave(gg, 1)[:, :K])
    assert torch.equal(deq, exact)
    # vs the artifact's own decode scale*code + fp16(-scale*zero): only the bias rounding differs
    art = lw.dequantize(torch.float64)
    bias = lw.biases.double().abs().repeat_interleave(gg, 1)[:, :K]
    assert bool(((deq - art).abs() <= bias * 2.0**-11 + 1e-12).all())


def test_v1_refuses_zero_point_zero_with_top_code():
    from memtool.kernels.lut_types import LutWeight

    N, K = 32, 32
    codes = torch.randint(0, 16, (N, K), generator=torch.Generator().manual_seed(0))
    codes[:, 0] = 15
    lw = LutWeight.from_codes(codes, "affine", 4, 32, scale=torch.rand(N, 1) + 0.1, bias=torch.zeros(N, 1))
    with pytest.raises(UsageError, match="gptq_v2"):
        to_gptq(lw, "x", "gptq")
    t = to_gptq(lw, "x", "gptq_v2")
    torch.testing.assert_close(ref_dequantize(t, 4, K, v1=False), lw.dequantize(torch.float64), rtol=0, atol=0)


def test_shift_when_top_code_unused():
    from memtool.kernels.lut_types import LutWeight

    N, K = 32, 32
    codes = torch.randint(0, 14, (N, K), generator=torch.Generator().manual_seed(1))
    scale = torch.rand(N, 1) + 0.1
    lw = LutWeight.from_codes(codes, "affine", 4, 32, scale=scale, bias=torch.zeros(N, 1))
    t = to_gptq(lw, "x", "gptq")
    torch.testing.assert_close(ref_dequantize(t, 4, K), lw.dequantize(torch.float64), rtol=0, atol=0)


def test_refusals():
    from memtool.kernels.lut_types import LutWeight

    w = torch.randn(32, 96)
    bcq = formats.get("lut").unpack(formats.get("lut").pack("x", quantize_weight(w, LutConfig(3, 32, "bcq"))))
    with pytest.raises(UsageError, match="only uniform"):
        to_gptq(bcq, "x")
    ragged = formats.get("lut").unpack(formats.get("lut").pack("x", quantize_weight(w, LutConfig(3, 64))))
    with pytest.raises(UsageError, match="not a multiple of the group size"):
        to_gptq(ragged, "x")
    lw = LutWeight.from_codes(torch.randint(0, 8, (32, 32)), "affine", 3, 32, scale=torch.ones(32, 1),
                              bias=torch.full((32, 1), -0.3))
    with pytest.raises(UsageError, match="not integers"):
        to_gptq(lw, "x")


def test_convert_artifact(tiny_llama_dir, tmp_path):
    art = tmp_path / "art"
    quantize_model(str(tiny_llama_dir), art, QuantizeSpec(bits=3, group_size=32))
    res = convert_to_gptq(art, tmp_path / "g", command=["test"])
    assert res["bits"] == 3 and res["group_size"] == 32 and res["layers"] == 14
    cfg = json.loads((tmp_path / "g" / "config.json").read_text())
    qc = cfg["quantization_config"]
    assert qc["quant_method"] == "gptq" and qc["bits"] == 3 and qc["desc_act"] is False and qc["sym"] is False
    from safetensors.torch import load_file

    sd = load_file(str(tmp_path / "g" / "model.safetensors"))
    a = read_artifact(art)
    name = "model.layers.1.mlp.down_proj"  # K = 160 = 5 groups of 32
    t = {k: sd[f"{name}.{k}"] for k in ("qweight", "qzeros", "scales", "g_idx")}
    assert t["qweight"].shape == (160 * 3 // 32, 64)
    lw = formats.get("lut").unpack(a.packed(name))
    deq = ref_dequantize(t, 3, 160)
    bias = lw.biases.double().abs().repeat_interleave(32, 1)
    assert bool(((deq - lw.dequantize(torch.float64)).abs() <= bias * 2.0**-11 + 1e-12).all())
    assert "model.embed_tokens.weight" in sd and "lm_head.weight" in sd
    assert (tmp_path / "g" / "tokenizer.json").exists() and (tmp_path / "g" / "manifest.json").exists()


def test_convert_refuses_ragged_and_nonuniform(tiny_llama_dir, tmp_path):
    quantize_model(str(tiny_llama_dir), tmp_path / "r", QuantizeSpec(bits=4, group_size=64))
    with pytest.raises(UsageError, match="in_features 160 is not a multiple of the group size 64"):
        convert_to_gptq(tmp_path / "r", tmp_path / "g")
    quantize_model(str(tiny_llama_dir), tmp_path / "n", QuantizeSpec(bits=4, group_size=32, method="nf"))
    with pytest.raises(UsageError, match="only uniform"):
        convert_to_gptq(tmp_path / "n", tmp_path / "g")
    assert not (tmp_path / "g").exists()
