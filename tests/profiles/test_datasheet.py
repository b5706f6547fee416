import pytest

from memtool.profiles.datasheet import datasheets, get_datasheet, match_gpu


@pytest.mark.parametrize("name,mem,want", [
    ("NVIDIA H100 80GB HBM3", 85.0, "h100-sxm"),
    ("NVIDIA H100 PCIe", 85.0, "h100-pcie"),
    ("NVIDIA H100 NVL", 99.9, "h100-nvl"),
    ("NVIDIA H200", 150.1, "h200-sxm"),
    ("NVIDIA A100-SXM4-40GB", 42.4, "a100-sxm-40"),
    ("NVIDIA A100-SXM4-80GB", 85.1, "a100-sxm-80"),
    ("NVIDIA A100 80GB PCIe", 85.1, "a100-pcie-80"),
    ("NVIDIA A100-PCIE-40GB", 42.4, "a100-pcie-40"),
    ("NVIDIA L40S", 48.3, "l40s"),
    ("NVIDIA L4", 23.7, "l4"),
    ("NVIDIA GeForce RTX 4090", 25.3, "rtx-4090"),
    ("NVIDIA GeForce RTX 3090", 25.4, "rtx-3090"),
    ("NVIDIA A10", 23.7, "a10"),
    ("Tesla V100-SXM2-16GB", 16.9, "v100-sxm2-16"),
    ("Tesla V100-SXM2-32GB", 34.1, "v100-sxm2-32"),
    ("Tesla V100-PCIE-32GB", 34.1, "v100-pcie"),
])
def test_match_known_names(name, mem, want):
    assert match_gpu(name, mem)["id"] == want


@pytest.mark.parametrize("name", ["NVIDIA GH200 480GB", "NVIDIA L40", "NVIDIA A10G", "NVIDIA GeForce RTX 3090 Ti",
                                  "NVIDIA GeForce RTX 4090 Laptop GPU", "AMD Instinct MI300X", "", None])
def test_no_false_matches(name):
    assert match_gpu(name, 40) is None


def test_sheets_are_complete_and_plausible():
    ids = [d["id"] for d in datasheets()]
    assert len(ids) == len(set(ids))
    for want in ("a100-sxm-40", "a100-sxm-80", "h100-sxm", "h100-pcie", "h200-sxm", "l40s", "rtx-4090",
                 "rtx-3090", "a10", "v100-sxm2-32"):
        assert want in ids
    for d in datasheets():
        assert 100 <= d["hbm_gbs"] <= 10000
        assert 10 <= d["fp16_tflops"] <= 2000
        assert d["pcie_gen"] in (3, 4, 5) and d["pcie_gbs"] > 10
        assert d["l2_mb"] > 0 and d["memory_gb"] > 0 and d["sm_count"] > 0
    h100 = get_datasheet("h100-sxm")
    assert h100["hbm_gbs"] == 3350 and h100["bf16_tflops"] == 989 and h100["l2_mb"] == 50
    assert get_datasheet("h200-sxm")["hbm_gbs"] == 4800
