"""memtool.offload.rng: counter-based Gaussians keyed by (seed, step, parameter, k)."""

import math

import pytest
import torch

from memtool.offload import rng


def _ref_bits(c: int, k1: int, k2: int) -> int:
    """Independent reference: lowbias32 with Python ints and explicit uint32 wrapping."""
    def mix(x):
        x ^= x >> 16
        x = (x * 0x21F0AAAD) & 0xFFFFFFFF
        x ^= x >> 15
        x = (x * 0x735A2D97) & 0xFFFFFFFF
        return x ^ (x >> 15)
    return mix(mix(c ^ k1) ^ k2)


def test_hash_bits_match_python_reference():
    g = torch.Generator().manual_seed(1)
    k1, k2 = (int(v) for v in torch.randint(0, 2**32 - 1, (2,), generator=g, dtype=torch.int64))
    c = torch.randint(0, 2**32 - 1, (300,), generator=g, dtype=torch.int64)
    got = rng.hash_bits(c, k1, k2).tolist()
    assert got == [_ref_bits(int(x), k1, k2) for x in c]


def test_gaussian_matches_box_muller_reference():
    k1, k2 = rng.stream_key(3, 7, rng.param_key("a.weight"), 0)
    z = rng.gaussian(11, 3, 7, rng.param_key("a.weight"))
    for i in range(11):
        pair = i // 2
        a, b = _ref_bits(2 * pair, k1, k2), _ref_bits(2 * pair + 1, k1, k2)
        u1, u2 = ((a >> 8) + 1) * 2.0**-24, (b >> 8) * 2.0**-24
        r = math.sqrt(-2 * math.log(u1))
        ref = r * (math.cos if i % 2 == 0 else math.sin)(2 * math.pi * u2)
        assert abs(z[i].item() - ref) < 1e-5


def test_element_depends_only_on_key_and_index():
    # long enough to cross the eager path's chunk boundary
    n = 2 * rng._CHUNK_PAIRS + 37
    full = rng.gaussian(n, 5, 9, 1234)
    assert torch.equal(full[:1001], rng.gaussian(1001, 5, 9, 1234))
    assert torch.equal(full, rng.gaussian(n, 5, 9, 1234))
    assert not torch.equal(full[:100], rng.gaussian(100, 5, 10, 1234)[:100])  # other step
    assert not torch.equal(full[:100], rng.gaussian(100, 5, 9, 1234, k=1))  # other perturbation
    assert abs(full.mean().item()) < 0.02 and abs(full.std().item() - 1) < 0.02


def test_pieces_are_slices_of_the_stream():
    full = rng.gaussian(5001, 1, 2, 3)
    for start, n in [(0, 10), (2, 7), (1000, 4001), (4998, 3)]:
        assert torch.equal(rng.gaussian(n, 1, 2, 3, start=start), full[start:start + n])
    with pytest.raises(ValueError):
        rng.gaussian(4, 1, 2, 3, start=1)


def test_independent_of_parameter_order():
    """The perturbation of a parameter is the same whatever order the parameters are drawn in."""
    names = [f"model.layers.{i}.mlp.weight" for i in range(5)] + ["lm_head.weight"]
    sizes = [17, 64, 3, 128, 5, 33]
    fwd = {n: rng.gaussian(s, 0, 4, rng.param_key(n)) for n, s in zip(names, sizes)}
    perm = torch.randperm(len(names), generator=torch.Generator().manual_seed(3)).tolist()
    for i in perm:
        again = rng.gaussian(sizes[i], 0, 4, rng.param_key(names[i]))
        assert torch.equal(fwd[names[i]], again)
    assert len({tuple(v[:3].tolist()) for v in fwd.values()}) == len(names)


def test_triton_kernel_same_bits_as_torch():
    pytest.importorskip("triton")
    if not rng._HAVE_TRITON:
        pytest.skip("triton kernel unavailable")
    k1, k2 = 3_000_000_001, 12345  # one key word above 2**31
    zt = rng.gaussian_triton(999, k1, k2, "cpu")  # TRITON_INTERPRET=1 on CPU
    z = rng.gaussian_torch(999, k1, k2)
    assert torch.allclose(zt, z, atol=1e-5, rtol=0)
    assert torch.allclose(rng.gaussian_triton(101, k1, k2, "cpu", start=500), z[500:601], atol=1e-5, rtol=0)
