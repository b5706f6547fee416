"""Format registry: pack/unpack round trips, accounting, and a new format plugged in without touching the writer."""

import pytest
import torch

from memtool.compress import formats
from memtool.compress.artifact import ArtifactWriter, read_artifact, summarize
from memtool.compress.formats import Format, PackedTensor
from memtool.compress.lut import LutConfig, quantize_weight
from memtool.errors import UsageError


@pytest.mark.parametrize("method", ["uniform", "bcq", "nf"])
@pytest.mark.parametrize("bits,g,k", [(2, 32, 96), (3, 64, 160), (4, 128, 160), (8, -1, 64)])
def test_lut_pack_matches_quantizer(method, bits, g, k):
    gen = torch.Generator().manual_seed(bits * 1000 + k)
    w = torch.randn(32, k, generator=gen)
    q = quantize_weight(w, LutConfig(bits=bits, group_size=g, method=method))
    p = formats.get("lut").pack("blk.proj", q)
    assert set(p.tensors) == {f"blk.proj.{s}" for s in formats.get("lut").tensor_suffixes(p.meta)}
    assert p.meta["method"] == method and p.meta["bits"] == bits and p.shape == (32, k)
    lw = formats.get("lut").unpack(p)
    assert torch.equal(lw.to_codes(), q.codes)
    # the stored (fp16) parameters decode to the quantizer's values up to fp16 rounding
    ref = q.dequantize(torch.float64)
    got = formats.get("lut").dequantize(p).double()
    tol = 2e-3 * ref.abs().max().item() + 1e-6
    assert (got - ref).abs().max().item() <= tol
    # accounting: codes + per-group fp16 parameters (+ table)
    bpw = formats.get("lut").bits_per_weight(p)
    assert bits <= bpw <= bits + 8.0 * (32 * 4 * 16 + 2 ** bits * 2) / (32 * k) + 3


def test_uniform_bias_holds_integer_zero():
    w = torch.randn(32, 128, generator=torch.Generator().manual_seed(1))
    q = quantize_weight(w, LutConfig(bits=4, group_size=32))
    p = formats.get("lut").pack("x", q)
    assert p.meta["integer_zeros"]
    s = p.tensors["x.scales"].float()
    b = p.tensors["x.biases"]
    z = torch.round(-b.float() / s)
    assert torch.equal(z, q.zero.float()) and torch.equal((-(s * z)).half(), b)


def test_dense_round_trip():
    t = torch.randn(7, 5, dtype=torch.bfloat16)
    p = formats.get("dense").pack("emb.weight", t)
    assert list(p.tensors) == ["emb.weight"] and not formats.get("dense").packed
    assert torch.equal(formats.get("dense").unpack(p), t)
    assert formats.get("dense").bits_per_weight(p) == 16


def test_unknown_format_is_one_line_usage_error():
    with pytest.raises(UsageError, match="unknown artifact format 'nope'"):
        formats.get("nope")


class HalfFormat(Format):
    """A toy format (stores a weight in fp16 under '<module>.w16') to show the plug-in seam."""

    name = "toy-half"

    def tensor_suffixes(self, meta):
        return ("w16",)

    def pack(self, module, obj, **kw):
        return PackedTensor(self.name, module, {f"{module}.w16": obj.half()}, {"format": self.name}, tuple(obj.shape))

    def unpack(self, packed):
        return packed.tensors[f"{packed.module}.w16"]

    def dequantize(self, packed, dtype=torch.float32):
        return self.unpack(packed).to(dtype)


def test_new_format_plugs_into_writer_and_reader(tmp_path):
    formats.register(HalfFormat())
    try:
        w = torch.randn(8, 4)
        with ArtifactWriter(tmp_path / "a") as wr:
            wr.add(formats.get("toy-half").pack("lin", w))
            wr.finish({"model_type": "toy"}, {"format": "toy-half"}, {})
        art = read_artifact(tmp_path / "a")
        assert art.packed_modules() == {"lin": {"format": "toy-half", "shape": [8, 4]}}
        p = art.packed("lin")
        torch.testing.assert_close(formats.get("toy-half").dequantize(p), w.half().float())
        s = summarize(tmp_path / "a")["summary"]
        assert s["quantized_layers"] == 1 and s["avg_bits_per_quantized_weight"] == 16
    finally:
        formats._REGISTRY.pop("toy-half", None)
