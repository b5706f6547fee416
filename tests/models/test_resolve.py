import json

import pytest
import torch

from memtool.errors import UsageError
from memtool.models import TensorSource, load_model, load_tokenizer, resolve
from memtool.models.tiny import save_tiny_model


def test_resolve_local_dir(tiny_llama_dir):
    ref = resolve(str(tiny_llama_dir))
    assert ref.kind == "dir" and ref.config["model_type"] == "llama" and not ref.is_artifact
    model = load_model(ref)
    tok = load_tokenizer(ref)
    ids = tok("abc", return_tensors="pt").input_ids
    assert model(ids).logits.shape == (1, 3, 260)


def test_missing_path():
    with pytest.raises(UsageError, match="no such file or directory"):
        resolve("/nonexistent/model/dir")


def test_dir_without_config(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(UsageError, match="no config.json"):
        resolve(str(tmp_path))


def test_bad_config_json(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(UsageError, match="not valid JSON"):
        resolve(str(tmp_path))


def test_truncated_safetensors(tmp_path, tiny_llama_dir):
    import shutil

    d = tmp_path / "m"
    shutil.copytree(tiny_llama_dir, d)
    f = d / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(UsageError, match="truncated safetensors"):
        resolve(str(d))
    f.write_bytes(data[:5])
    with pytest.raises(UsageError, match="truncated"):
        resolve(str(d))


def test_pickle_refused_without_flag(tmp_path, tiny_llama_dir):
    d = tmp_path / "pk"
    d.mkdir()
    (d / "config.json").write_text((tiny_llama_dir / "config.json").read_text())
    torch.save({"w": torch.randn(2)}, d / "pytorch_model.bin")
    with pytest.raises(UsageError, match="--allow-pickle"):
        resolve(str(d))
    assert resolve(str(d), allow_pickle=True).pickle_files == [d / "pytorch_model.bin"]
    with pytest.raises(UsageError, match="pickle"):
        resolve(str(d / "pytorch_model.bin"))


def test_hub_id_offline_uncached(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with pytest.raises(UsageError, match="not in the Hugging Face cache.*HF_HUB_OFFLINE"):
        resolve("some-org/some-model-that-is-not-cached")


def test_hub_id_from_cache(monkeypatch, tmp_path, tiny_llama_dir):
    """A hub id that is in the cache resolves offline (lay out the cache the way huggingface_hub does)."""
    cache = tmp_path / "hub"
    repo = cache / "models--acme--tiny"
    snap = repo / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    for f in tiny_llama_dir.iterdir():
        (snap / f.name).write_bytes(f.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    ref = resolve("acme/tiny")
    assert ref.kind == "hub" and ref.config["model_type"] == "llama"


def test_sharded_checkpoint_streams_in_index_order(tmp_path):
    d = save_tiny_model(tmp_path / "sharded", "llama", max_shard_size="100KB")
    src = TensorSource(resolve(str(d)))
    assert len(src.shards) > 1
    index = json.loads((d / "model.safetensors.index.json").read_text())["weight_map"]
    names = [n for n, _ in src.iter_tensors()]
    assert sorted(names) == sorted(index)
    model = load_model(resolve(str(d)))
    sd = model.state_dict()
    for n, t in src.iter_tensors():
        assert torch.equal(sd[n], t)
