"""Streaming a multi-shard checkpoint of several hundred MB keeps peak RSS growth near one shard."""

import subprocess
import sys
import textwrap

import torch
from safetensors.torch import save_file

SHARD_MB = 96
N_SHARDS = 4


def _write_checkpoint(d):
    import json

    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "llama"}))
    wmap = {}
    g = torch.Generator().manual_seed(0)
    for s in range(N_SHARDS):
        name = f"model-{s + 1:05d}-of-{N_SHARDS:05d}.safetensors"
        tensors = {f"layer{s}.w{i}": torch.randn(SHARD_MB * 2**20 // 4 // 8 // 1024, 1024, generator=g)
                   for i in range(8)}  # 8 tensors of 12 MB = 96 MB per shard
        save_file(tensors, str(d / name))
        wmap.update({k: name for k in tensors})
        del tensors
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": wmap}))


def test_stream_peak_rss_about_one_shard(tmp_path):
    d = tmp_path / "big"
    _write_checkpoint(d)
    script = textwrap.dedent(f"""
        import threading, time, psutil, torch
        from memtool.models import TensorSource, resolve
        proc = psutil.Process()
        peak = [0]
        stop = False
        def watch():
            while not stop:
                peak[0] = max(peak[0], proc.memory_info().rss)
                time.sleep(0.002)
        src = TensorSource(resolve({str(d)!r}))
        base = proc.memory_info().rss
        th = threading.Thread(target=watch); th.start()
        total = 0.0; n = 0
        for name, t in src.iter_tensors():
            total += float(t.sum()); n += 1   # touch every byte, then drop
            del t
            peak[0] = max(peak[0], proc.memory_info().rss)
        stop = True; th.join()
        print(n, base, peak[0])
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    n, base, peak = map(int, out.stdout.split())
    assert n == 8 * N_SHARDS
    growth_mb = (peak - base) / 2**20
    total_mb = SHARD_MB * N_SHARDS
    # about one shard (mapped pages of the current shard + the tensor being copied), far below the whole file
    print(f"peak RSS growth {growth_mb:.0f} MB while streaming {total_mb} MB in {N_SHARDS} shards")
    assert growth_mb < 1.5 * SHARD_MB + 32, f"peak RSS grew {growth_mb:.0f} MB for {total_mb} MB of shards"
