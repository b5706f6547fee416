import os
from pathlib import Path

from memtool.profiles.detect import _cache_bytes, detect, parse_cpuinfo

X86 = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse4_2 avx avx2 fma avx512f avx512bw avx512_bf16 amx_tile amx_bf16 amx_int8
processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu
"""

ARM = """processor\t: 0
BogoMIPS\t: 2000.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp asimddp sve sve2 bf16 i8mm
CPU implementer\t: 0x41
"""


def test_parse_cpuinfo_x86():
    info = parse_cpuinfo(X86)
    assert info["model"] == "Intel(R) Xeon(R) Platinum 8480+"
    assert info["isa"] == ["sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_bf16",
                           "amx_tile", "amx_bf16", "amx_int8"]


def test_parse_cpuinfo_arm_reports_neon():
    info = parse_cpuinfo(ARM)
    assert "neon" in info["isa"] and "sve2" in info["isa"] and "i8mm" in info["isa"]
    assert "avx2" not in info["isa"]


def test_cache_size_parsing():
    assert _cache_bytes("32768K") == 32 << 20
    assert _cache_bytes("1M") == 1 << 20
    assert _cache_bytes("bogus") is None


def test_detect_this_machine():
    d = detect()
    cpu = d["cpu"]
    assert cpu["cores_logical"] == os.cpu_count()
    assert 1 <= cpu["cores_physical"] <= cpu["cores_logical"]
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), [])
    for f in ("avx2", "avx512f", "avx512_bf16"):
        assert (f in cpu["isa"]) == (f in flags)
    assert d["ram"]["total_gb"] > 0 and 0 < d["ram"]["available_gb"] <= d["ram"]["total_gb"]
    assert d["gpus"] == []  # the CPU test machine
    assert d["versions"]["torch"] and d["versions"]["python"]
