"""Packing of q-bit codes (memtool/kernels/lut_layout.py): exact round trips, field coverage, pair decode."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from memtool.errors import UsageError
from memtool.kernels import lut_layout as L


@settings(max_examples=60, deadline=None)
@given(bits=st.sampled_from([2, 3, 4, 8]), n=st.integers(1, 5), k=st.integers(1, 300), seed=st.integers(0, 2**31))
def test_round_trip(bits, n, k, seed):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 2**bits, (n, k), dtype=torch.uint8, generator=g)
    q = L.pack_codes(codes, bits)
    assert q.dtype == torch.int32 and q.shape == (n, bits * L.num_units(k))
    assert torch.equal(L.unpack_codes(q, bits, k), codes)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_fields_cover_every_bit_once(bits):
    seen_word_bits, seen_code_bits = set(), set()
    for i, p, pos, width, cb in L.fields(bits):
        for j in range(width):
            assert (p, pos + j) not in seen_word_bits
            seen_word_bits.add((p, pos + j))
            seen_code_bits.add((i, cb + j))
    assert seen_code_bits == {(i, b) for i in range(32) for b in range(bits)}
    assert len(seen_word_bits) == 32 * bits  # dense: no wasted bit, also for 3 bits


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_pair_decode_matches_layout(bits):
    """The shift+mask pair decode the kernels use gives codes (lo, hi) in the two 16-bit halves."""
    codes = torch.randint(0, 2**bits, (3, 64), dtype=torch.uint8)
    ku = L.num_units(64)
    q = L.pack_codes(codes, bits).view(-1)[L.word_offsets(3, bits, ku)].to(torch.int64) & 0xFFFFFFFF
    m = (1 << bits) - 1
    for u in range(2):
        words = [q[:, p, u] for p in range(bits)]
        for word, shift, lo, hi in L.pair_slots(bits):
            if word < 0:  # 3-bit codes 30/31, bit-sliced over the three words
                v = ((words[0] >> 15) & 0x10001) | ((words[1] >> 14) & 0x20002) | ((words[2] >> 13) & 0x40004)
            else:
                v = (words[word] >> shift) & (m | m << 16)
            assert torch.equal(v & 0xFFFF, codes[:, 32 * u + lo].long())
            assert torch.equal(v >> 16, codes[:, 32 * u + hi].long())


@pytest.mark.parametrize("n,ku", [(1, 1), (64, 4), (65, 5), (130, 9), (200, 3)])
def test_word_offsets_is_a_tiling(n, ku):
    bits = 3
    off = L.word_offsets(n, bits, ku)
    assert torch.equal(off.view(-1).sort().values, torch.arange(n * bits * ku))  # a permutation: no gap, no overlap
    # each block of 64 rows keeps the memory its rows would have in a row-major layout
    block = off // (64 * bits * ku)
    assert torch.equal(block, (torch.arange(n) // 64)[:, None, None].expand_as(block))
    # inside a full tile (64 rows x 4 units) one plane is one contiguous run of 256 words
    if n >= 64 and ku >= 4:
        run = off[:64, 1, :4].reshape(-1)
        assert torch.equal(run, run[0] + torch.arange(256))


def test_row_slices_on_block_boundaries_are_packed_weights():
    codes = torch.randint(0, 8, (150, 200), dtype=torch.uint8)
    q = L.pack_codes(codes, 3)
    for r0, r1 in ((0, 64), (64, 150), (128, 150)):
        assert torch.equal(L.unpack_codes(q[r0:r1], 3, 200), codes[r0:r1])


def test_exact_bits_per_weight():
    # 3-bit rows cost exactly 3 bits per weight when 32 divides K (576 = hidden size of the default model)
    assert L.words_per_row(3, 576) * 32 == 3 * 576


def test_bad_input():
    with pytest.raises(UsageError):
        L.pack_codes(torch.zeros(2, 4, dtype=torch.uint8) + 8, 3)
    with pytest.raises(UsageError):
        L.pack_codes(torch.zeros(2, 4, dtype=torch.uint8), 7)
    with pytest.raises(UsageError):
        L.unpack_codes(torch.zeros(2, 5, dtype=torch.int32), 4, 64)
