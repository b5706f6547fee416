"""TensorSource (memtool/models/source.py): tensors read with plain file reads equal safetensors' own loader."""

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from memtool.models.source import TensorSource


def test_reads_every_dtype_like_safetensors(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {
        "a.f32": torch.randn(3, 5, generator=g),
        "b.f16": torch.randn(7, generator=g).half(),
        "c.bf16": torch.randn(2, 3, 4, generator=g).bfloat16(),
        "d.i64": torch.randint(-9, 9, (6,), generator=g),
        "e.u8": torch.randint(0, 255, (4, 4), generator=g, dtype=torch.uint8),
        "f.bool": torch.rand(5, generator=g) > 0.5,
        "g.scalar": torch.tensor(3.5),
        "h.empty": torch.zeros(0, 4),
    }
    save_file({k: v for k, v in list(tensors.items())[:4]}, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file({k: v for k, v in list(tensors.items())[4:]}, str(tmp_path / "model-00002-of-00002.safetensors"))
    src = TensorSource(tmp_path)
    got = dict(src.iter_tensors())
    assert set(got) == set(tensors)
    for shard in src.shards:
        with safe_open(str(shard), framework="pt") as f:
            for k in f.keys():
                want = f.get_tensor(k)
                assert got[k].dtype == want.dtype and got[k].shape == want.shape
                assert torch.equal(got[k], want)
                assert torch.equal(src.get_tensor(k), want)
    # the tensors own their memory (no view of a mapped file): writing one leaves the others alone
    got["a.f32"].add_(1)
    assert torch.equal(got["a.f32"], tensors["a.f32"] + 1)
