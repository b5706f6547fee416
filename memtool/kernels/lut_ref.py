"""The torch reference for ``lut_matmul``: dequantize to fp32, matmul in fp32, cast to the input dtype.

Works on any device and shape; it is the definition every other backend is checked against.
"""

from __future__ import annotations

import torch

from memtool.kernels.lut_types import LutWeight


def lut_matmul_ref(x: torch.Tensor, w: LutWeight) -> torch.Tensor:
    """y = x @ W^T with W = w.dequantize(float32); x [..., K] -> [..., N] in x.dtype."""
    wd = w.dequantize(torch.float32).to(x.device)
    return (x.to(torch.float32) @ wd.T).to(x.dtype)


def lut_matmul_f64(x: torch.Tensor, w: LutWeight) -> torch.Tensor:
    """The same in float64 (for tests and GPU checks)."""
    wd = w.dequantize(torch.float32).to(device=x.device, dtype=torch.float64)
    return x.to(torch.float64) @ wd.T
