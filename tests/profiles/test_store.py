import json

import pytest

from memtool.profiles import current_profile, load_report, make_report, profile_key, save_report
from memtool.profiles.store import profiles_dir

DETECTED_GPU = {
    "cpu": {"model": "Test CPU 9000", "llc_bytes": 32 << 20},
    "ram": {"total_gb": 100.0, "available_gb": 90.0},
    "gpus": [{"index": 0, "name": "NVIDIA H100 80GB HBM3", "memory_gb": 85.0, "sm_count": 132,
              "compute_capability": "9.0", "l2_bytes": 50 << 20}],
    "versions": {"torch": "x"},
}
MEASURED = {
    "gpu": {"device": "cuda:0", "h2d_pinned_gbs": 53.1, "d2h_pinned_gbs": 52.0, "bidir_pinned_gbs": 80.0,
            "h2d_pageable_gbs": 12.0, "d2h_pageable_gbs": 9.0, "d2d_copy_gbs": 2900.5,
            "matmul_bf16_tflops": 700.0, "matmul_fp16_tflops": 710.0, "matmul_n": 8192},
    "cpu": {"copy_gbs": 20.0, "matmul_fp32_gflops": 900.0, "matmul_bf16_gflops": None,
            "adamw_foreach_params_per_s": 1e9, "adamw_fused_params_per_s": 4.5e9, "matmul_n": 4096},
    "notes": [],
}


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMTOOL_CACHE", str(tmp_path))
    return tmp_path


def test_profiles_dir_honours_env(cache):
    assert profiles_dir() == cache / "profiles"


def test_keys():
    assert profile_key(DETECTED_GPU, "cuda:0") == "gpu-nvidia-h100-80gb-hbm3"
    assert profile_key(DETECTED_GPU, "cpu") == "cpu-test-cpu-9000"


def test_detected_then_datasheet_then_measured(cache):
    cpu_only = dict(DETECTED_GPU, gpus=[])
    p = current_profile("cpu", detected=cpu_only)
    assert p.source == "detected" and p.mem_bw_gbs is None and p.cache_bytes == 32 << 20

    p = current_profile("cuda:0", detected=DETECTED_GPU)
    assert p.source == "datasheet" and p.datasheet_id == "h100-sxm"
    assert p.mem_bw_gbs == 3350 and p.peak_tflops == 989 and p.h2d_gbs == 63.0
    assert p.cache_bytes == 50 << 20

    paths = save_report(make_report(DETECTED_GPU, MEASURED, "cuda:0"))
    assert sorted(x.name for x in paths) == ["cpu-test-cpu-9000.json", "gpu-nvidia-h100-80gb-hbm3.json"]
    assert not [f for f in (cache / "profiles").iterdir() if f.name.startswith(".")]  # no temp files left

    p = current_profile("cuda:0", detected=DETECTED_GPU)
    assert p.source == "measured" and p.mem_bw_gbs == 2900.5 and p.peak_tflops == 710.0
    assert p.h2d_gbs == 53.1 and p.d2h_pageable_gbs == 9.0 and p.cpu_adam_params_per_s == 4.5e9
    assert p.datasheet_id == "h100-sxm" and p.path.endswith("gpu-nvidia-h100-80gb-hbm3.json")
    c = current_profile("cpu", detected=DETECTED_GPU)
    assert c.source == "measured" and c.mem_bw_gbs == 20.0 and c.peak_tflops == pytest.approx(0.9)
    assert current_profile("cuda:0", detected=DETECTED_GPU, use_saved=False).source == "datasheet"


def test_round_trip_is_lossless(cache):
    report = make_report(DETECTED_GPU, MEASURED, "cuda:0")
    save_report(report)
    back = load_report("gpu-nvidia-h100-80gb-hbm3")
    back.pop("_path")
    assert back == json.loads(json.dumps(report))


def test_corrupt_saved_profile_is_ignored_with_a_note(cache):
    d = cache / "profiles"
    d.mkdir()
    (d / "gpu-nvidia-h100-80gb-hbm3.json").write_text("{not json")
    p = current_profile("cuda:0", detected=DETECTED_GPU)
    assert p.source == "datasheet"
    assert any("unreadable saved profile" in n for n in p.notes)


def test_unknown_gpu_is_detected_only(cache):
    det = dict(DETECTED_GPU, gpus=[dict(DETECTED_GPU["gpus"][0], name="Mystery Accelerator", l2_bytes=None)])
    p = current_profile("cuda:0", detected=det)
    assert p.source == "detected" and p.mem_bw_gbs is None and p.cache_bytes is None
    assert p.notes and "memtool profile --measure" in p.notes[0]
