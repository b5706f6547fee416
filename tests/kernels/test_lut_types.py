"""LutWeight (memtool/kernels/lut_types.py): dequantization against explicit loops, storage round trip."""

import pytest
import torch

from memtool.errors import UsageError
from memtool.kernels import LutWeight

from .helpers import rand_weight


def loop_dequant(w):
    """float64 explicit loops over the documented formulas."""
    codes = w.to_codes().tolist()
    n, k, g = w.out_features, w.in_features, w.group_size
    out = torch.zeros(n, k, dtype=torch.float64)
    for r in range(n):
        for c in range(k):
            j, code = c // g, codes[r][c]
            if w.kind == "affine":
                v = float(w.scales[r, j]) * code + float(w.biases[r, j])
            elif w.kind == "bcq":
                v = float(w.offsets[r, j]) + sum(
                    float(w.alphas[r, j, i]) * (2 * ((code >> i) & 1) - 1) for i in range(w.bits))
            else:
                t = w.table if w.table.dim() == 1 else w.table[r, j]
                v = float(w.scales[r, j]) * float(t[code])
            out[r, c] = v
    return out


@pytest.mark.parametrize("kind,bits,k,g,pg", [
    ("affine", 3, 100, 32, False), ("affine", 4, 70, None, False), ("bcq", 2, 65, 64, False),
    ("bcq", 3, 96, 32, False), ("table", 4, 50, 32, False), ("table", 3, 40, 32, True), ("affine", 8, 33, 32, False),
])
def test_dequantize_matches_loops(kind, bits, k, g, pg):
    w = rand_weight(kind, bits, 5, k, g, seed=bits + k, per_group_table=pg)
    ref = loop_dequant(w)
    assert torch.allclose(w.dequantize(torch.float64), ref, rtol=1e-6, atol=1e-6)
    # the per-group lookup table gives the same weights
    lut = w.lut().double()
    idx = torch.arange(k) // w.group_size
    via_lut = torch.gather(lut[:, idx], 2, w.to_codes().long().unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(via_lut, ref, rtol=1e-6, atol=1e-6)


def test_state_dict_round_trip():
    for kind in ("affine", "bcq", "table"):
        w = rand_weight(kind, 3, 7, 75, 32, seed=3)
        sd = w.state_dict(prefix="layer.")
        assert sd["layer.qweight"].dtype == torch.int32
        assert all(t.dtype == torch.float16 for name, t in sd.items() if not name.endswith("qweight"))
        w2 = LutWeight.from_state_dict(sd, prefix="layer.", **w.meta())
        assert torch.equal(w2.dequantize(), w.dequantize())
        assert torch.equal(w2.to_codes(), w.to_codes())


def test_clone_is_equal_in_fresh_memory_without_caches():
    for kind in ("affine", "bcq", "table"):
        w = rand_weight(kind, 3, 7, 75, 32, seed=4)
        w.cache["x"] = 1
        c = w.clone()
        assert c.cache == {} and c.meta() == w.meta()
        for name in ("qweight", "scales", "biases", "alphas", "offsets", "table"):
            a, b = getattr(w, name), getattr(c, name)
            assert (a is None and b is None) or (torch.equal(a, b) and a.data_ptr() != b.data_ptr())


def test_per_channel_and_bits():
    w = rand_weight("affine", 3, 4, 576, -1)
    assert w.group_size == 576 and w.groups == 1
    w = rand_weight("affine", 3, 64, 576, 128)
    assert w.groups == 5  # 576 = 4.5 x 128: the last group is short
    assert 3.0 < w.bits_per_weight() < 3.5


def test_bad_arguments():
    c = torch.zeros(2, 8, dtype=torch.uint8) + 1
    with pytest.raises(UsageError):
        LutWeight.from_codes(c, "nope", 3, 4, scale=torch.ones(2, 2), bias=torch.ones(2, 2))
    with pytest.raises(UsageError):
        LutWeight.from_codes(c, "affine", 7, 4, scale=torch.ones(2, 2), bias=torch.ones(2, 2))
    with pytest.raises(UsageError):
        LutWeight.from_codes(c, "affine", 3, 4, scale=torch.ones(2, 3), bias=torch.ones(2, 2))
    with pytest.raises(UsageError):
        LutWeight.from_codes(c, "bcq", 3, 4, offset=torch.ones(2, 2))
    with pytest.raises(UsageError):
        LutWeight.from_codes(c, "affine", 3, -5, scale=torch.ones(2, 1), bias=torch.ones(2, 1))
