import pytest
import torch

from memtool.bench.cases_baseline import INT4_GROUP, int4_check, int4_ops, pack_int4, quantize_int4


def test_quantize_int4_matches_an_explicit_loop():
    n, k = 4, 256
    w = torch.randn(n, k, dtype=torch.float64)
    q, sz, deq = quantize_int4(w)
    assert q.dtype == torch.int32 and q.min() >= 0 and q.max() <= 15
    assert sz.shape == (k // INT4_GROUP, n, 2) and sz.dtype == torch.bfloat16
    for i in range(n):
        for g in range(k // INT4_GROUP):
            block = w[i, g * INT4_GROUP:(g + 1) * INT4_GROUP]
            scale, zero = float(sz[g, i, 0]), float(sz[g, i, 1])
            for j in range(0, INT4_GROUP, 37):
                assert deq[i, g * INT4_GROUP + j].item() == pytest.approx((q[i, g * INT4_GROUP + j].item() - 8) * scale + zero, rel=1e-5, abs=1e-6)
            # the quantization error is at most about half a step (scale/zero rounded to bf16)
            step = (block.max() - block.min()).item() / 15
            err = (deq[i, g * INT4_GROUP:(g + 1) * INT4_GROUP].double() - block).abs().max().item()
            assert err <= 0.5 * step + 0.02 * block.abs().max().item()


@pytest.mark.skipif(int4_ops("cpu") is None, reason="this torch has no CPU int4 kernel")
def test_cpu_int4_kernel_matches_the_dequantized_reference():
    assert int4_check(64, 256, 3, "cpu", "cpu") < 1e-2
    # an independent float64 reference with explicit dequantization
    w = torch.randn(16, 128)
    x = torch.randn(2, 128, dtype=torch.bfloat16)
    q, sz, _ = quantize_int4(w)
    _, mm = int4_ops("cpu")
    y = mm(x, pack_int4(q, "cpu"), INT4_GROUP, sz).double()
    s = sz[..., 0].double().t().repeat_interleave(INT4_GROUP, dim=1)
    z = sz[..., 1].double().t().repeat_interleave(INT4_GROUP, dim=1)
    ref = x.double() @ ((q.double() - 8) * s + z).t()
    assert ((y - ref).norm() / ref.norm()).item() < 1e-2
