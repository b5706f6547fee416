"""memtool.offload.zo: the MeZO step against an explicit reference, offload parity, selection, decay, learning."""

import copy

import pytest
import torch
from torch import nn

from memtool.errors import UsageError
from memtool.models.tiny import tiny_model
from memtool.offload import rng
from memtool.offload import zo as zo_mod
from memtool.offload.zo import ZOConfig, ZOTrainer, decays, lr_at


def _ids(rows=2, seq=12, seed=0):
    return torch.randint(0, 256, (rows, seq), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch,pieces", [("llama", False), ("gpt2", False), ("gpt2", True)])
def test_step_matches_explicit_mezo(arch, pieces, monkeypatch):
    """gpt2: tied embeddings / head, learned positions; pieces: z drawn in small pieces (the GPU path)."""
    m = tiny_model(arch, seed=3)
    ref = copy.deepcopy(m)
    cfg = ZOConfig(lr=1e-2, eps=1e-2, seed=11)
    if pieces:
        monkeypatch.setattr(zo_mod, "Z_CHUNK", 1000)
    tr = ZOTrainer(m, cfg, "cpu", "on", cache_z=not pieces)
    ids = _ids(seed=4)
    out = tr.train_step(ids, ids)
    tr.flush()

    params = dict(ref.named_parameters())  # tied weights once
    theta = {n: p.detach().clone() for n, p in params.items()}
    z = {n: rng.gaussian(p.numel(), 11, 1, rng.param_key(n)).view(p.shape) for n, p in params.items()}
    losses = []
    with torch.no_grad():
        for s in (1, -1):
            for n, p in params.items():
                p.copy_(theta[n] + s * cfg.eps * z[n])
            losses.append(ref(input_ids=ids, labels=ids).loss.item())
    assert abs(out["loss_plus"] - losses[0]) < 1e-5 and abs(out["loss_minus"] - losses[1]) < 1e-5
    g = out["proj_grad"][0]
    assert abs(g - (losses[0] - losses[1]) / (2 * cfg.eps)) < 2e-3
    got = dict(m.named_parameters())
    for n in params:
        want = theta[n] - cfg.lr * g * z[n]
        assert torch.allclose(got[n].detach(), want, atol=1e-6, rtol=0), n


@pytest.mark.parametrize("arch,pieces", [("llama", False), ("opt", False), ("gpt2", False), ("llama", True)])
def test_offloaded_and_resident_are_bit_identical(arch, pieces, monkeypatch):
    if pieces:
        monkeypatch.setattr(zo_mod, "Z_CHUNK", 998)
    runs = []
    for mode in ("off", "on", [False, True]):  # resident, streamed, mixed
        m = tiny_model(arch, seed=1)
        cfg = ZOConfig(lr=1e-3, eps=1e-3, seed=2, n_perturb=2, grad_accum=2, weight_decay=0.1,
                       schedule="cosine", warmup_steps=1, total_steps=4)
        tr = ZOTrainer(m, cfg, "cpu", mode, cache_z=not pieces)
        assert tr.streamer.n_offloaded == {"off": 0, "on": 2}.get(mode if isinstance(mode, str) else "", 1)
        hist = [tr.train_step(_ids(4, 10, s), _ids(4, 10, s)) for s in range(4)]
        tr.flush()
        runs.append((hist, {k: v.clone() for k, v in m.state_dict().items()}))
    (ha, wa) = runs[0]
    for hb, wb in runs[1:]:
        assert [(h["loss"], h["proj_grad"]) for h in ha] == [(h["loss"], h["proj_grad"]) for h in hb]
        assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_write_back_only_after_an_update():
    m = tiny_model("llama", seed=0)
    tr = ZOTrainer(m, ZOConfig(lr=1e-3), "cpu", "on")
    blocks = sum(b.nbytes for b in tr.streamer.blocks)
    tr.train_step(_ids(), _ids())  # step 1: nothing pending, blocks only read
    assert tr.streamer.bytes_up >= blocks and tr.streamer.bytes_down == 0  # (+ block 0 prefetched for step 2)
    tr.train_step(_ids(), _ids())  # step 2 applies step 1's update during the residency
    assert tr.streamer.bytes_down == blocks
    tr.flush()
    assert tr.streamer.bytes_down == 2 * blocks
    tr.evaluate([(_ids(), _ids())])  # evaluation reads only
    assert tr.streamer.bytes_down == 2 * blocks


def test_trainable_patterns_and_hooks_removed():
    m = tiny_model("llama", seed=2)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    tr = ZOTrainer(m, ZOConfig(lr=1e-2, trainable=["norm"]), "cpu", "on")
    assert all("norm" in n for n in tr.trainable_names) and len(tr.trainable_names) == 5
    for s in range(2):
        tr.train_step(_ids(seed=s), _ids(seed=s))
    tr.flush()
    tr.close()
    after = m.state_dict()
    for k in before:
        assert torch.equal(before[k], after[k]) != ("norm" in k), k
    # hooks are gone: the model's forward is the plain one again
    ids = _ids()
    with torch.no_grad():
        ref = copy.deepcopy(m)
        assert torch.equal(m(ids).logits, ref(ids).logits)


def test_weight_decay_skips_norms_and_biases():
    m = tiny_model("gpt2", seed=0)
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    tr = ZOTrainer(m, ZOConfig(lr=0.1, weight_decay=0.5), "cpu", "on")
    tr.pending = (1, 0.1, [0.0])  # a step whose projected gradient is 0: only the decay acts
    tr.flush()
    for n, p in m.named_parameters():
        want = before[n] * (1 - 0.05) if decays(n, p) else before[n]
        assert torch.allclose(p.detach(), want, atol=1e-7, rtol=0), n
    assert not decays("transformer.h.0.ln_1.weight", torch.zeros(4))
    assert not decays("model.layers.0.mlp.up_proj.bias", torch.zeros(4, 4))
    assert decays("model.layers.0.mlp.up_proj.weight", torch.zeros(4, 4))


def test_lr_schedules():
    c = ZOConfig(lr=1.0, warmup_steps=2, total_steps=12, schedule="linear")
    assert [lr_at(c, s) for s in (1, 2)] == [0.5, 1.0]
    assert lr_at(c, 7) == pytest.approx(0.5) and lr_at(c, 12) == pytest.approx(0.0)
    c.schedule = "cosine"
    assert lr_at(c, 7) == pytest.approx(0.5) and lr_at(c, 12) == pytest.approx(0.0, abs=1e-12)
    c.schedule = "constant"
    assert lr_at(c, 12) == 1.0


def test_loss_falls_on_memorization():
    m = tiny_model("llama", seed=0)
    tr = ZOTrainer(m, ZOConfig(lr=1e-3, eps=1e-3, seed=0), "cpu", "on")
    ids = torch.tensor([list(b"hello world, zeroth order!")])
    losses = [tr.train_step(ids, ids)["loss"] for _ in range(250)]
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < first - 0.8, (first, last)
    assert tr.evaluate([(ids, ids)]) < first - 0.8


def test_bad_inputs():
    with pytest.raises(UsageError, match="eps"):
        ZOTrainer(tiny_model("llama"), ZOConfig(eps=0.0), "cpu")
    with pytest.raises(UsageError, match="matches no parameter"):
        ZOTrainer(tiny_model("llama"), ZOConfig(trainable=["nothing_like_this"]), "cpu")

    class NoBlocks(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)

    with pytest.raises(UsageError, match="no list of transformer blocks"):
        ZOTrainer(NoBlocks(), ZOConfig(), "cpu")
