import math

import pytest

from memtool.profiles.measure import _cpu_adam, _cpu_copy, _cpu_matmul, measure


def test_cpu_measurements_are_positive_and_finite():
    for v in (_cpu_copy(4 << 20), _cpu_matmul(128, "float32"), _cpu_adam(1 << 14, "foreach")):
        assert v > 0 and math.isfinite(v)


def test_measure_on_cpu_reports_gpu_as_na():
    m = measure("cpu", quick=True)
    assert m["gpu"] is None
    assert any("n/a" in n for n in m["notes"])
    cpu = m["cpu"]
    assert cpu["copy_gbs"] > 0 and cpu["matmul_fp32_gflops"] > 0
    assert cpu["adamw_foreach_params_per_s"] > 0


def test_measure_cuda_without_gpu_is_a_usage_error():
    from memtool.errors import UsageError

    with pytest.raises(UsageError):
        measure("cuda:0", quick=True)
