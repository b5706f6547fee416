"""Backend selection and the MEMTOOL_KERNEL override (memtool/kernels/dispatch.py)."""

import pytest
import torch

from memtool.errors import UsageError
from memtool.kernels import dispatch, lut_matmul
from memtool.kernels.lut_ref import lut_matmul_f64

from .helpers import rand_weight, rel_err


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    monkeypatch.delenv("MEMTOOL_KERNEL", raising=False)


def test_cpu_tensors_use_the_cpu_path():
    w = rand_weight("affine", 3, 16, 64, 32)
    x = torch.randn(2, 64)
    assert dispatch.select(x, w).name == "cpu"
    assert rel_err(lut_matmul(x, w), lut_matmul_f64(x, w)) < 1e-6


def test_env_override(monkeypatch):
    w = rand_weight("table", 4, 16, 64, 32)
    x = torch.randn(3, 64, dtype=torch.float16)
    for name in ("ref", "cpu", "triton"):
        monkeypatch.setenv("MEMTOOL_KERNEL", name)
        assert dispatch.select(x, w).name == name
        assert rel_err(lut_matmul(x, w), lut_matmul_f64(x, w)) < 1e-3
    monkeypatch.setenv("MEMTOOL_KERNEL", "nope")
    with pytest.raises(UsageError):
        lut_matmul(x, w)


def test_forced_backend_that_cannot_run_is_an_error(monkeypatch):
    w = rand_weight("affine", 3, 16, 64, 32)
    monkeypatch.setenv("MEMTOOL_KERNEL", "triton")
    with pytest.raises(UsageError):  # Triton backend declares fp16/bf16 only
        lut_matmul(torch.randn(2, 64), w)


def test_support_table():
    w = rand_weight("affine", 3, 16, 100, 48)  # group size not a multiple of 32: not for Triton
    x = torch.randn(1, 100, dtype=torch.float16)
    tri = next(b for b in dispatch.BACKENDS if b.name == "triton")
    assert "group size" in tri.supports(x, w, forced=True)
    assert dispatch.BACKENDS[-1].supports(x, w) is None  # the reference takes everything


def test_wrong_feature_count():
    w = rand_weight("affine", 3, 16, 64, 32)
    with pytest.raises(UsageError):
        lut_matmul(torch.randn(2, 63), w)
