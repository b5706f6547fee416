"""The one-kernel RMSNorm (Triton, under the interpreter here) against a float64 reference of Llama's formula."""

import pytest
import torch

from memtool.kernels.rmsnorm import rmsnorm, rmsnorm_ref


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
