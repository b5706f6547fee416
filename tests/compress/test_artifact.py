"""Artifact writer/reader: atomic writes, overwrite swap, sharding, validation errors, summaries."""

import json
import os
import signal
from pathlib import Path

import pytest
import torch

from memtool.compress import formats
from memtool.compress.artifact import ArtifactWriter, read_artifact, summarize
from memtool.errors import UsageError


def _lut_packed(name, n=64, k=96, bits=3, g=32, seed=0):
    from memtool.kernels.lut_types import LutWeight

    gen = torch.Generator().manual_seed(seed)
    G = -(-k // g)
    codes = torch.randint(0, 2**bits, (n, k), generator=gen)
    lw = LutWeight.from_codes(codes, "affine", bits, g, scale=torch.rand(n, G, generator=gen) + 0.1,
                              bias=torch.randn(n, G, generator=gen))
    return formats.get("lut").pack(name, lw)


def _write(out, n_layers=3, fail_at=None, overwrite=False, max_shard_bytes=1 << 30, exc=RuntimeError):
    with ArtifactWriter(out, overwrite=overwrite, max_shard_bytes=max_shard_bytes) as w:
        for i in range(n_layers):
            if i == fail_at:
                raise exc("injected failure")
            w.add(_lut_packed(f"layers.{i}.proj", seed=i))
            w.add(formats.get("dense").pack(f"layers.{i}.norm.weight", torch.randn(64)))
        w.finish({"model_type": "toy"}, {"format": "lut", "bits": 3}, {"command": ["test"], "seed": 0})
    return Path(out)


def _siblings(out: Path):
    return sorted(p.name for p in out.parent.iterdir())


def test_write_and_read(tmp_path):
    out = _write(tmp_path / "art")
    assert _siblings(out) == ["art"]
    art = read_artifact(out)
    assert art.qconfig["quant_method"] == "memtool" and art.qconfig["format_version"] == 1
    assert set(art.packed_modules()) == {f"layers.{i}.proj" for i in range(3)}
    man = json.loads((out / "manifest.json").read_text())
    assert man["memtool_version"] and man["command"] == ["test"] and len(man["layers"]) == 6
    assert man["files"][0]["sha256"] and man["totals"]["quantized_layers"] == 3
    p = art.packed("layers.1.proj")
    ref = _lut_packed("layers.1.proj", seed=1)
    torch.testing.assert_close(formats.get("lut").dequantize(p), formats.get("lut").dequantize(ref), rtol=0, atol=0)


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_interrupted_write_leaves_nothing(tmp_path, exc):
    with pytest.raises(exc):
        _write(tmp_path / "art", fail_at=2, exc=exc)
    assert _siblings(tmp_path / "art") == []


def test_sigterm_cleans_up(tmp_path):
    out = tmp_path / "art"
    with pytest.raises(KeyboardInterrupt):
        with ArtifactWriter(out) as w:
            w.add(_lut_packed("a"))
            os.kill(os.getpid(), signal.SIGTERM)
    assert _siblings(out) == []
    assert signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, signal.default_int_handler) or callable(
        signal.getsignal(signal.SIGTERM))


def test_existing_out_refused_and_untouched(tmp_path):
    out = tmp_path / "art"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(UsageError, match="already exists"):
        _write(out)
    assert (out / "keep.txt").read_text() == "precious" and _siblings(out) == ["art"]


def test_overwrite_swaps_atomically(tmp_path):
    out = tmp_path / "art"
    out.mkdir()
    (out / "old.txt").write_text("old")
    _write(out, overwrite=True)
    assert not (out / "old.txt").exists() and (out / "config.json").exists()
    assert _siblings(out) == ["art"]


def test_failed_overwrite_keeps_old(tmp_path):
    out = tmp_path / "art"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        _write(out, overwrite=True, fail_at=1)
    assert (out / "old.txt").read_text() == "old" and _siblings(out) == ["art"]


def test_sharding_writes_index(tmp_path):
    out = _write(tmp_path / "art", n_layers=4, max_shard_bytes=4000)
    idx = json.loads((out / "model.safetensors.index.json").read_text())
    files = sorted(set(idx["weight_map"].values()))
    assert len(files) > 1 and all(f.startswith("model-") and f.endswith(f"-of-{len(files):05d}.safetensors")
                                  for f in files)
    art = read_artifact(out)
    assert len(list(art.iter_packed())) == 8
    s = summarize(out)["summary"]
    assert s["quantized_layers"] == 4 and s["compression_ratio"] > 1


def _edit_config(out, fn):
    cfg = json.loads((out / "config.json").read_text())
    fn(cfg)
    (out / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("edit,match", [
    (lambda c: c.pop("quantization_config"), "no quantization_config"),
    (lambda c: c["quantization_config"].update(quant_method="gptq"), "quant_method is 'gptq'"),
    (lambda c: c["quantization_config"].update(format_version=99), "newer than this memtool"),
    (lambda c: c["quantization_config"]["modules"]["layers.0.proj"].update(format="zzz"), "unknown artifact format"),
    (lambda c: c["quantization_config"]["modules"]["layers.0.proj"].update(bits=7), "unsupported lut bits"),
    (lambda c: c["quantization_config"].update(lut_layout="other"), "lut layout"),
    (lambda c: c["quantization_config"]["modules"].update({"ghost": {"format": "lut", "kind": "affine", "bits": 3,
                                                                     "group_size": 32}}), "lacks tensor ghost.qweight"),
])
def test_read_validation_errors(tmp_path, edit, match):
    out = _write(tmp_path / "art", n_layers=1)
    _edit_config(out, edit)
    with pytest.raises(UsageError, match=match) as e:
        read_artifact(out)
    assert "\n" not in str(e.value)


def test_read_missing_things(tmp_path):
    with pytest.raises(UsageError, match="no such artifact"):
        read_artifact(tmp_path / "nope")
    out = _write(tmp_path / "art", n_layers=1)
    (out / "manifest.json").write_text("{not json")
    with pytest.raises(UsageError, match="manifest.json is not valid JSON"):
        read_artifact(out)
    (out / "manifest.json").unlink()
    with pytest.raises(UsageError, match="no manifest.json"):
        read_artifact(out)
    (out / "config.json").write_text("{")
    with pytest.raises(UsageError, match="config.json is not valid JSON"):
        read_artifact(out)


def test_summarize_plain_checkpoint(tiny_llama_dir):
    info = summarize(tiny_llama_dir)
    s = info["summary"]
    assert not s["artifact"] and s["quantized_layers"] == 0 and s["compression_ratio"] == 1
    assert all(r["format"].startswith("dense") for r in info["rows"])
    assert any(r["layer"] == "model.layers.0.mlp.down_proj.weight" and r["shape"] == "64x160" for r in info["rows"])
