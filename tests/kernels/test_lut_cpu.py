"""CPU path (memtool/kernels/lut_cpu.py) against the torch reference."""

import torch

from memtool.kernels.lut_cpu import lut_matmul_cpu
from memtool.kernels.lut_ref import lut_matmul_f64, lut_matmul_ref

from .helpers import rand_weight, rel_err


def test_fp32_equals_reference_and_caches(monkeypatch):
    for kind in ("affine", "bcq", "table"):
        w = rand_weight(kind, 3, 37, 130, 64, seed=1)
        x = torch.randn(4, 130)
        y = lut_matmul_cpu(x, w)
        assert torch.allclose(y, lut_matmul_ref(x, w), rtol=1e-5, atol=1e-5)
        assert rel_err(y, lut_matmul_f64(x, w)) < 1e-6
        assert ("cpu_dense", torch.float32) in w.cache
        monkeypatch.setenv("MEMTOOL_CPU_CACHE", "0")
        w.cache.clear()
        y2 = lut_matmul_cpu(x, w)
        assert not w.cache and torch.allclose(y2, y, rtol=1e-5, atol=1e-5)
        monkeypatch.delenv("MEMTOOL_CPU_CACHE")


def test_half_precisions():
    w = rand_weight("affine", 4, 20, 96, 32, seed=2)
    for dt, tol in ((torch.bfloat16, 1e-2), (torch.float16, 1e-3)):
        x = torch.randn(2, 5, 96).to(dt)
        y = lut_matmul_cpu(x, w)
        assert y.dtype == dt and y.shape == (2, 5, 20)
        assert rel_err(y, lut_matmul_f64(x, w)) < tol


def test_rows_chunking(monkeypatch):
    import memtool.kernels.lut_cpu as C

    monkeypatch.setattr(C, "CHUNK_ROWS", 100)  # -> chunks of 64 rows (whole blocks of the tile layout)
    w = rand_weight("bcq", 2, 150, 64, 32, seed=4)
    x = torch.randn(3, 64)
    assert rel_err(lut_matmul_cpu(x, w), lut_matmul_f64(x, w)) < 1e-6
