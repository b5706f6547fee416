"""The static-cache decode loop (memtool/models/decode.py) against full forward passes (CPU; the CUDA graph that
replays its step runs on GPUs only: scripts/gpu_decode_bench.py)."""

import pytest
import torch

from memtool.models.decode import choose, static_generate


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_llama_dir, torch_dtype=torch.float32).eval()


def _teacher_forced_ok(model, ids, new):
    """Every new token is (up to ties) the argmax of a cache-free forward pass over the prompt and the tokens so far."""
    seq = torch.cat([ids[0], new[:-1]])[None]
    with torch.no_grad():
        ref = model(seq).logits[0, ids.shape[1] - 1:].double()
    picked = ref.gather(1, new[:, None])[:, 0]
    return bool((picked >= ref.max(1).values - 1e-4).all())


def test_greedy_matches_full_forward(tiny):
    torch.manual_seed(0)
    ids = torch.randint(0, tiny.config.vocab_size, (1, 9))
    st = {}
    new = static_generate(tiny, ids, 20, graph=False, stats=st)
    assert new.shape == (20,) and st["steps"] == 19 and st["decode_s"] > 0 and st["prefill_s"] > 0
    assert _teacher_forced_ok(tiny, ids, new)


def test_stops_after_eos(tiny):
    ids = torch.tensor([[5, 17, 33, 2, 90]])
    full = static_generate(tiny, ids, 12, graph=False)
    eos = int(full[4])
    first = int((full == eos).nonzero()[0])
    out = static_generate(tiny, ids, 12, graph=False, eos_token_id=eos)
    assert torch.equal(out, full[: first + 1])


def test_sampling_seeded_and_top_p(tiny):
    ids = torch.tensor([[1, 2, 3]])
    a = static_generate(tiny, ids, 10, temperature=0.9, seed=3, graph=False)
    b = static_generate(tiny, ids, 10, temperature=0.9, seed=3, graph=False)
    assert torch.equal(a, b)
    greedy = static_generate(tiny, ids, 10, graph=False)
    tiny_p = static_generate(tiny, ids, 10, temperature=0.9, top_p=1e-9, seed=3, graph=False)
    assert torch.equal(tiny_p, greedy)  # only the top token is left to sample


def test_choose_distribution():
    """Sample frequencies vs the top-p renormalised softmax computed by an explicit loop in float64."""
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, 3.0]])
    t, top_p = 0.7, 0.8
    e = [float(torch.tensor(v / t, dtype=torch.float64).exp()) for v in logits[0].tolist()]
    p = [v / sum(e) for v in e]
    order = sorted(range(len(p)), key=lambda i: -p[i])
    keep, mass = [], 0.0
    for i in order:
        if mass >= top_p:
            break
        keep.append(i)
        mass += p[i]
    want = [p[i] / mass if i in keep else 0.0 for i in range(len(p))]
    gen = torch.Generator().manual_seed(0)
    n = 20000
    counts = torch.zeros(len(p))
    for _ in range(n):
        counts[int(choose(logits, t, top_p, gen))] += 1
    for i, w in enumerate(want):
        sd = (w * (1 - w) / n) ** 0.5
        assert abs(counts[i].item() / n - w) <= 5 * sd + 1e-9, (i, counts[i].item() / n, w)
    assert int(choose(logits, 0.0, 1.0, None)) == 5


def test_lut_artifact_decodes(tiny_llama_dir, tmp_path):
    from memtool.compress.quantize import QuantizeSpec, quantize_model
    from memtool.models import load_model, resolve

    art = tmp_path / "a"
    quantize_model(str(tiny_llama_dir), art, QuantizeSpec(bits=4, group_size=32))
    m = load_model(resolve(str(art)), dtype=torch.float32, device="cpu")
    ids = torch.tensor([[7, 8, 9, 10]])
    new = static_generate(m, ids, 12, graph=False)
    assert _teacher_forced_ok(m, ids, new)


def test_bad_calls(tiny):
    with pytest.raises(ValueError, match="CUDA device"):
        static_generate(tiny, torch.tensor([[1, 2]]), 3, graph=True)
    with pytest.raises(ValueError, match="one prompt"):
        static_generate(tiny, torch.tensor([[1, 2], [3, 4]]), 3, graph=False)
