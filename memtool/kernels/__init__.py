"""LUT kernels: the packed weight type, its layout, and ``lut_matmul`` (Triton on CUDA, a CPU path, a reference).

``from memtool.kernels import LutWeight, lut_matmul``.
"""

from memtool.kernels.lut_types import LutWeight  # noqa: F401


def lut_matmul(x, w):
    """y = x @ W^T for a :class:`LutWeight` (see :mod:`memtool.kernels.dispatch`)."""
    from memtool.kernels.dispatch import lut_matmul as _mm

    return _mm(x, w)
