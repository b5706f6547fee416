"""The one-kernel RMSNorm and rotary embedding (Triton, under the interpreter here) against float64 references."""

import pytest
import torch

from memtool.kernels.decode_ops import rmsnorm, rmsnorm_ref, rope, rope_ref


def _f64(x, w, eps):
    """float64: weight * round_to_x_dtype(x / sqrt(mean(x^2) + eps)), the module's two roundings kept."""
    xd = x.double()
    h = (xd * torch.rsqrt(xd.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype).double()
    return w.double() * h


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("n", [576, 1000, 64])
def test_rmsnorm_matches_float64(dtype, n):
    g = torch.Generator().manual_seed(n)
    x = (torch.randn(3, 5, n, generator=g) * 3).to(dtype)
    w = (torch.rand(n, generator=g) + 0.5).to(dtype)
    y = rmsnorm(x, w, 1e-5)
    assert y.shape == x.shape and y.dtype == dtype
    want = _f64(x, w, 1e-5)
    ulp = {torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7, torch.float32: 2.0**-23}[dtype]
    # one rounding of the product plus, rarely, the normalized row rounding the other way (statistics in fp32)
    err = ((y.double() - want).abs() / want.abs().clamp(min=1e-3)).max().item()
    assert err <= 2.5 * ulp, err


def test_rmsnorm_matches_the_module_and_promotes_like_it():
    """fp16 activations with an fp32 weight give fp32, as ``weight * h.to(x.dtype)`` does in torch."""
    x = torch.randn(4, 96).half()
    w = torch.rand(96) + 0.5
    y = rmsnorm(x, w, 1e-6)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, rmsnorm_ref(x, w, 1e-6), rtol=2e-3, atol=1e-6)


def test_rmsnorm_strided_rows_and_empty():
    x = torch.randn(6, 130)[:, 1:129]  # rows 130 apart, last dim contiguous
    w = torch.rand(128) + 0.5
    torch.testing.assert_close(rmsnorm(x, w, 1e-6), rmsnorm_ref(x, w, 1e-6), rtol=1e-5, atol=1e-6)
    assert rmsnorm(torch.empty(0, 128), w, 1e-6).shape == (0, 128)


def test_rmsnorm_rejects_a_weight_of_the_wrong_size():
    with pytest.raises(ValueError, match="weight of shape"):
        rmsnorm(torch.randn(2, 8), torch.ones(7), 1e-6)


def _rope_f64(x, cos, sin):
    """float64 of torch's fp ops: round(round(x * c) + round(rotate_half(x) * s)), each rounding to x's dtype."""
    half = x.shape[-1] // 2
    c, s = cos.unsqueeze(1).double(), sin.unsqueeze(1).double()
    rh = torch.cat((-x[..., half:], x[..., :half]), dim=-1).double()
    a = (x.double() * c).to(x.dtype).double()
    b = (rh * s).to(x.dtype).double()
    return (a + b).to(x.dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_rope_matches_float64_on_a_transposed_view(dtype):
    """q as attention makes it: [B, S, H, D] memory viewed as [B, H, S, D]; cos / sin [B, S, D]."""
    g = torch.Generator().manual_seed(1)
    b, s, h, d = 2, 5, 3, 64
    x = torch.randn(b, s, h, d, generator=g).to(dtype).transpose(1, 2)
    ang = torch.rand(b, s, d // 2, generator=g) * 6
    cos = torch.cat((ang.cos(), ang.cos()), -1).to(dtype)
    sin = torch.cat((ang.sin(), ang.sin()), -1).to(dtype)
    y = rope(x, cos, sin)
    assert y.shape == x.shape and y.dtype == dtype
    want = _rope_f64(x, cos, sin)
    if dtype == torch.bfloat16:  # Triton's interpreter casts fp32 -> bf16 by truncation (the GPU rounds to nearest)
        torch.testing.assert_close(y.float(), want.float(), rtol=2.0**-6, atol=2.0**-5)
    else:
        assert torch.equal(y, want)  # the same roundings: bit-exact
        torch.testing.assert_close(y, rope_ref(x, cos, sin), rtol=0, atol=0)


def test_rope_one_row_of_positions_for_the_batch():
    x = torch.randn(3, 2, 4, 16).half()
    ang = torch.rand(1, 4, 8) * 6
    cos, sin = torch.cat((ang.cos(), ang.cos()), -1).half(), torch.cat((ang.sin(), ang.sin()), -1).half()
    assert torch.equal(rope(x, cos, sin), _rope_f64(x, cos, sin))


def test_rope_other_shapes_take_the_reference():
    x = torch.randn(1, 2, 3, 5)  # odd head size
    cos, sin = torch.ones(1, 3, 5), torch.zeros(1, 3, 5)
    torch.testing.assert_close(rope(x, cos, sin), x)
