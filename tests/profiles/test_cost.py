import math

import pytest

from memtool.profiles.cost import gemm_bytes, gemm_time, roofline_pct, transfer_time
from memtool.profiles.profile import Profile

H100 = Profile(key="gpu-test-h100", source="datasheet", device="cuda:0", mem_bw_gbs=3350.0, peak_tflops=989.0,
               h2d_gbs=50.0, d2h_gbs=40.0, bidir_gbs=80.0)


def test_gemv_fp16_bytes_and_time_by_hand():
    r = gemm_time(1, 28672, 8192, weight_bits=16, profile=H100)
    want_bytes = 28672 * 8192 * 2 + 1 * 8192 * 2 + 1 * 28672 * 2
    assert r["bytes"] == want_bytes
    assert r["flops"] == 2 * 28672 * 8192
    assert r["t_mem"] == pytest.approx(want_bytes / 3350e9)
    assert r["t_compute"] == pytest.approx(2 * 28672 * 8192 / 989e12)
    assert r["t_roofline"] == r["t_mem"] and r["bound"] == "memory"
    assert r["t_roofline"] * 1e6 == pytest.approx(140.25, abs=0.05)  # REFERENCES: ~140 us at 3.35 TB/s


def test_quantized_gemv_by_hand():
    # 4-bit g128, fp16 scales, no zeros: REFERENCES says ~36 us; 3-bit ~27 us
    r4 = gemm_time(1, 28672, 8192, weight_bits=4, group_size=128, profile=H100)
    w = 28672 * 8192
    assert r4["bytes"] == w // 2 + (w // 128) * 2 + 8192 * 2 + 28672 * 2
    assert r4["t_roofline"] * 1e6 == pytest.approx(36.17, abs=0.05)
    r3 = gemm_time(1, 28672, 8192, weight_bits=3, group_size=128, profile=H100)
    assert r3["t_roofline"] * 1e6 == pytest.approx(27.41, abs=0.05)
    # asymmetric (scale + zero per group, both 16 bit)
    rz = gemm_time(1, 4096, 4096, 4, 128, profile=H100, zero_bits=16)
    assert rz["bytes"] == 4096 * 4096 / 2 + (4096 * 4096 / 128) * 4 + 4096 * 2 * 2


def test_compute_bound_gemm():
    r = gemm_time(8192, 8192, 8192, profile=H100)
    assert r["bytes"] == 3 * 8192 * 8192 * 2
    assert r["t_compute"] == pytest.approx(2 * 8192**3 / 989e12)
    assert r["bound"] == "compute" and r["t_roofline"] == r["t_compute"]
    assert r["intensity"] == pytest.approx(2 * 8192**3 / (3 * 8192 * 8192 * 2))


def test_gemm_bytes_rejects_bad_dims():
    with pytest.raises(ValueError):
        gemm_bytes(0, 16, 16)


def test_transfer_time():
    gb = 1e9
    assert transfer_time(gb, H100) == pytest.approx(1 / 50)
    assert transfer_time(gb, H100, direction="d2h") == pytest.approx(1 / 40)
    assert transfer_time(gb, H100, direction="both") == pytest.approx(1 / 40)  # 80 GB/s total = 40 each way
    assert transfer_time(gb, H100, pinned=False) == pytest.approx(4 / 50)  # unmeasured pageable: 1/4 of pinned
    measured = Profile(key="x", source="measured", device="cuda:0", h2d_gbs=50.0, h2d_pageable_gbs=10.0)
    assert transfer_time(gb, measured, pinned=False) == pytest.approx(1 / 10)
    assert transfer_time(gb, Profile(key="cpu", source="detected", device="cpu")) is None
    with pytest.raises(ValueError):
        transfer_time(gb, H100, direction="sideways")


def test_roofline_pct():
    r = gemm_time(1, 4096, 4096, profile=H100)
    assert roofline_pct(2 * r["t_roofline"], r["bytes"], r["flops"], H100) == pytest.approx(50.0)
    assert roofline_pct(r["t_roofline"], r["bytes"], r["flops"], H100) == pytest.approx(100.0)
    empty = Profile(key="cpu", source="detected", device="cpu")
    assert roofline_pct(1e-3, r["bytes"], r["flops"], empty) is None
    assert gemm_time(1, 64, 64, profile=empty)["t_roofline"] is None
    # only compute peak known: the roofline is the compute bound
    half = Profile(key="c", source="measured", device="cpu", peak_tflops=1.0)
    assert math.isclose(gemm_time(4, 64, 64, profile=half)["t_roofline"], 2 * 4 * 64 * 64 / 1e12)
