"""LutLinear against a float64 reference, dtype handling, and the module swap's errors."""

import pytest
import torch
from torch import nn

from memtool.compress.modules import LutLinear, swap_modules
from memtool.errors import UsageError
from memtool.kernels.lut_types import LutWeight


def _lw(kind, bits, g, n=48, k=160, seed=0):
    gen = torch.Generator().manual_seed(seed)
    G = -(-k // (k if g == -1 else g))
    codes = torch.randint(0, 2**bits, (n, k), generator=gen)
    if kind == "affine":
        kw = dict(scale=torch.rand(n, G, generator=gen) + 0.05, bias=torch.randn(n, G, generator=gen))
    elif kind == "bcq":
        kw = dict(alpha=torch.rand(n, G, bits, generator=gen), offset=torch.randn(n, G, generator=gen))
    else:
        kw = dict(scale=torch.rand(n, G, generator=gen) + 0.05, table=torch.randn(2**bits, generator=gen).sort().values)
    return LutWeight.from_codes(codes, kind, bits, g, **kw)


def _ref_weight(w: LutWeight) -> torch.Tensor:
    """Explicit float64 decode with loops over groups (independent of LutWeight.dequantize)."""
    codes = w.to_codes().long()
    n, k = codes.shape
    g = w.group_size
    out = torch.empty(n, k, dtype=torch.float64)
    for j in range(w.groups):
        sl = slice(j * g, min((j + 1) * g, k))
        c = codes[:, sl]
        if w.kind == "affine":
            out[:, sl] = w.scales[:, j, None].double() * c + w.biases[:, j, None].double()
        elif w.kind == "bcq":
            acc = w.offsets[:, j, None].double().expand_as(c).clone()
            for i in range(w.bits):
                acc += w.alphas[:, j, i, None].double() * (((c >> i) & 1) * 2 - 1)
            out[:, sl] = acc
        else:
            out[:, sl] = w.scales[:, j, None].double() * w.table.double()[c]
    return out


@pytest.mark.parametrize("kind", ["affine", "bcq", "table"])
@pytest.mark.parametrize("bits,g", [(2, 32), (3, 64), (4, -1), (8, 128)])
def test_lut_linear_matches_reference(kind, bits, g):
    w = _lw(kind, bits, g, seed=bits)
    bias = torch.randn(48)
    m = LutLinear.from_lut_weight(w, bias)
    x = torch.randn(3, 5, 160)
    W = _ref_weight(w)
    ref = x.double() @ W.T + bias.double()
    y = m(x)
    assert y.dtype == torch.float32 and y.shape == (3, 5, 48)
    scale = x.double().abs() @ W.abs().T + bias.double().abs()  # fp32 error bound is relative to this
    assert bool(((y.double() - ref).abs() <= 1e-5 * scale + 1e-6).all())


def test_lut_linear_state_dict_and_dtype():
    w = _lw("affine", 3, 32)
    m = LutLinear.from_lut_weight(w)
    assert set(m.state_dict()) == {"qweight", "scales", "biases"}
    m.to(torch.bfloat16)
    assert m.scales.dtype == torch.float16 and m.qweight.dtype == torch.int32
    x = torch.randn(2, 160, dtype=torch.bfloat16)
    assert m(x).dtype == torch.bfloat16
    # loading new buffers invalidates the cached weight
    w2 = _lw("affine", 3, 32, seed=5)
    m2 = LutLinear.from_lut_weight(w)
    m2.load_state_dict(w2.state_dict())
    torch.testing.assert_close(m2(torch.ones(1, 160)).double(), torch.ones(1, 160).double() @ _ref_weight(w2).T,
                               rtol=1e-5, atol=1e-4)


def test_swap_modules_errors():
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU())
    meta = {"format": "lut", "kind": "affine", "bits": 4, "group_size": 32}
    assert swap_modules(model, {"0": meta}, device="cpu") == ["0"]
    assert isinstance(model[0], LutLinear) and model[0].bias is not None
    with pytest.raises(UsageError, match="not a Linear"):
        swap_modules(model, {"1": meta})
    with pytest.raises(UsageError, match="does not have"):
        swap_modules(model, {"5": meta})
    with pytest.raises(UsageError, match="unknown artifact format"):
        swap_modules(nn.Sequential(nn.Linear(4, 4)), {"0": {"format": "mystery"}})


def test_inference_mode_buffers():
    w = _lw("bcq", 4, 32)
    with torch.inference_mode():
        m = LutLinear.from_lut_weight(w.to("cpu"))
        m._buffers["qweight"] = m.qweight.clone()  # an inference tensor
        y = m(torch.ones(2, 160))
    torch.testing.assert_close(y.double(), torch.ones(2, 160).double() @ _ref_weight(w).T, rtol=1e-5, atol=1e-3)
