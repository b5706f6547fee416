"""RTN quantization streams: peak RSS growth stays near two shards, far below the checkpoint size."""

import os
import subprocess
import sys
import textwrap

SHARD_MB = 40


def test_rtn_quantize_peak_rss(tmp_path):
    script = textwrap.dedent(f"""
        import threading, time, psutil, torch
        from memtool.models.tiny import save_tiny_model
        from memtool.compress.quantize import QuantizeSpec, quantize_model
        from memtool.models import TensorSource
        small = save_tiny_model({str(tmp_path / "small")!r}, "llama")
        big = save_tiny_model({str(tmp_path / "big")!r}, "llama", max_shard_size="{SHARD_MB}MB", hidden_size=512,
                              intermediate_size=1536, num_hidden_layers=16, num_attention_heads=8,
                              num_key_value_heads=8)
        total = TensorSource(big).nbytes()
        nshards = len(TensorSource(big).shards)
        spec = QuantizeSpec(bits=4, group_size=128, max_shard_bytes={SHARD_MB} * 2**20 // 4)
        quantize_model(str(small), {str(tmp_path / "warm")!r}, spec)   # imports, allocator warm-up
        import gc; gc.collect()
        proc = psutil.Process()
        base = proc.memory_info().rss
        peak = [base]; stop = [False]
        def watch():
            while not stop[0]:
                peak[0] = max(peak[0], proc.memory_info().rss)
                time.sleep(0.002)
        th = threading.Thread(target=watch); th.start()
        res = quantize_model(str(big), {str(tmp_path / "out")!r}, spec)
        stop[0] = True; th.join()
        print(total, nshards, base, peak[0], res["totals"]["quantized_layers"])
    """)
    # glibc's growing mmap threshold would keep freed multi-MB blocks in the heap; measure what is live instead
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "1048576", "MALLOC_TRIM_THRESHOLD_": "1048576"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    total, nshards, base, peak, nq = map(int, out.stdout.split()[-5:])
    growth_mb = (peak - base) / 2**20
    print(f"peak RSS growth {growth_mb:.0f} MB quantizing {total / 2**20:.0f} MB in {nshards} shards")
    assert nq == 16 * 7 and nshards >= 4
    assert growth_mb < 2 * SHARD_MB + 48, f"peak RSS grew {growth_mb:.0f} MB for {total / 2**20:.0f} MB of shards"
