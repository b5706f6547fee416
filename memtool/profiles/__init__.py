"""Hardware profiles: detection, measurement, GPU datasheets, saved profiles and a roofline cost model.

    from memtool.profiles import current_profile, gemm_time
    p = current_profile()            # measured (saved by `memtool profile --measure`) > datasheet > detected
    gemm_time(1, 28672, 8192, weight_bits=4, group_size=128, profile=p)["t_roofline"]
"""

from memtool.profiles.cost import gemm_bytes, gemm_time, roofline_pct, roofline_time, transfer_time
from memtool.profiles.datasheet import datasheets, match_gpu
from memtool.profiles.detect import detect
from memtool.profiles.profile import Profile, build_profile, profile_key
from memtool.profiles.store import current_profile, load_report, make_report, profiles_dir, save_report

__all__ = [
    "Profile", "build_profile", "profile_key", "current_profile", "detect", "datasheets", "match_gpu",
    "gemm_bytes", "gemm_time", "roofline_time", "roofline_pct", "transfer_time", "load_report", "make_report",
    "profiles_dir", "save_report", "profile_report",
]


def profile_report(device: str | None = None, measure: bool = False, quick: bool = False, save: bool = True,
                   progress=None) -> dict:
    """What ``memtool profile`` shows: detection, optional measurement (saved when ``save``), and the profile.

    Returns ``{"report", "profile", "saved_to", "notes"}``.
    """
    from memtool.profiles.measure import measure as _measure
    from memtool.profiles.store import default_device

    device = device or default_device()
    if device == "cuda":
        device = "cuda:0"
    detected = detect()
    if device.startswith("cuda"):
        from memtool.errors import UsageError

        idx = device.partition(":")[2]
        if not detected["gpus"] or (idx and (not idx.isdigit() or int(idx) >= len(detected["gpus"]))):
            raise UsageError(f"device {device}: torch sees {len(detected['gpus'])} CUDA GPU(s)")
    elif device != "cpu":
        from memtool.errors import UsageError

        raise UsageError(f"device must be cpu, cuda or cuda:N, got {device!r}")
    notes: list[str] = []
    measured = _measure(device, quick=quick, progress=progress) if measure else None
    if measured:
        notes += measured.get("notes", [])
    report = make_report(detected, measured, device)
    saved: list[str] = []
    if measured and save:
        saved = [str(p) for p in save_report(report)]
    prof = build_profile(detected, device, measured, created=report["created"]) if measured else \
        current_profile(device, detected=detected)
    notes += prof.notes
    return {"report": report, "profile": prof, "saved_to": saved, "notes": notes}


def profile_rows(result: dict) -> list[dict]:
    """Flatten :func:`profile_report` into ``{"section", "item", "value"}`` rows for a markdown table."""
    rows: list[dict] = []
    det = result["report"]["detected"]
    meas = result["report"].get("measured") or {}

    def add(section: str, item: str, value) -> None:
        rows.append({"section": section, "item": item, "value": "n/a" if value is None else value})

    cpu = det["cpu"]
    for k in ("model", "arch", "cores_physical", "cores_logical", "usable_cores", "torch_cpu_capability"):
        add("cpu", k, cpu.get(k))
    add("cpu", "isa", " ".join(cpu.get("isa") or []) or None)
    add("cpu", "llc_MiB", round(cpu["llc_bytes"] / 2**20, 1) if cpu.get("llc_bytes") else None)
    add("ram", "total_gb", det["ram"]["total_gb"])
    add("ram", "available_gb", det["ram"]["available_gb"])
    for g in det["gpus"]:
        s = f"gpu{g['index']}"
        add(s, "name", g["name"])
        add(s, "memory_gb", g["memory_gb"])
        add(s, "sm_count", g["sm_count"])
        add(s, "compute_capability", g["compute_capability"])
        add(s, "l2_MiB", round(g["l2_bytes"] / 2**20, 1) if g.get("l2_bytes") else None)
    if not det["gpus"]:
        add("gpu", "cuda", "none detected")
    for k, v in det["versions"].items():
        add("versions", k, v)
    if meas:
        for part in ("gpu", "cpu"):
            vals = meas.get(part)
            if vals is None:
                add(f"measured {part}", "all", None)
                continue
            for k, v in vals.items():
                add(f"measured {part}", k, round(v, 2) if isinstance(v, float) else v)
    p = result["profile"]
    for k in ("key", "source", "device", "device_name", "mem_bw_gbs", "mem_bw_source", "peak_tflops", "peak_source",
              "h2d_gbs", "d2h_gbs", "transfer_source", "cpu_adam_params_per_s", "datasheet_id"):
        v = getattr(p, k)
        add("profile", k, round(v, 2) if isinstance(v, float) else v)
    return rows
