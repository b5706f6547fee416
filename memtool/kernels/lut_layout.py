"""Packed layout of q-bit LUT codes (q in {2, 3, 4, 8}) in int32 words.

Units
-----
The K (input) axis of each output row is cut into *units* of 32 consecutive codes. A unit occupies exactly
``q`` int32 words (32*q bits, no waste, also for 3 bits). ``KU = ceil(K / 32)`` (no further padding, so a
3-bit row costs exactly 3 bits per weight when 32 divides K); codes past K are stored as 0 and never read
as weights (kernels mask the matching activations to 0). When KU is a multiple of 4 (K a multiple of 128,
as in every large model) every run of 4 units of one row and plane starts on a 16-byte boundary.

Tile layout ("tiles64x4")
-------------------------
``qweight`` is int32 ``[N, q * KU]`` (one row's worth of words per row, no padding), but the words are laid
out in *tiles* so that a GPU kernel streaming a block of rows reads one contiguous run: rows are cut into
blocks of ``ROW_BLOCK = 64`` (the last block may be shorter: ``R = min(64, N - 64*b)``), units into tiles of
``UNIT_TILE = 4`` (the last tile may be narrower: ``U = min(4, KU - 4*t)``). Block b occupies the flat words
``[64*b*q*KU, (64*b + R)*q*KU)`` (the same memory as its rows in a row-major layout); inside it the tiles
follow each other and each tile is a row-major ``[q, R, U]`` array. Word ``p`` of unit ``u`` of row ``n`` is
the flat word

    64*b*q*KU + 4*t*q*R + (p*R + r)*U + (u - 4*t),   b = n // 64, r = n % 64, t = u // 4

(:func:`word_offsets`). A [64 rows x 4 units] tile of one plane is one 1 KiB run, so a warp reading 32 rows
x 16 bytes touches 512 contiguous bytes (the row-major layout touched 32 separate 16-byte pieces: ~2x the
GEMV time on an H200). Row slices that start on a multiple of 64 (``qweight[r0:r1]``) are valid packed
weights of their own.

Code placement inside the words of a unit (chosen for the fp16 "magic number" decode)
-------------------------------------------------------------------------------------
Codes are placed so that one shift + one AND/OR (``lop3``) of a word yields TWO codes, one in each 16-bit
half: ``((w >> s) & (m | m << 16)) | 0x64006400`` read as two fp16 numbers is ``(1024 + code_a,
1024 + code_b)`` exactly (m = 2^q - 1).

* q in {2, 4, 8}: ``cpw = 32 / q`` codes per word; word p of a unit holds unit-codes ``i = cpw*p + j``
  for ``j in 0..cpw-1``, code j at bit ``16*(j % 2) + q*(j // 2)``. So pair ``t = j // 2`` is read with
  shift ``q*t``; its low half is code ``2t`` and its high half code ``2t + 1``.
  (4 bits: nibble order in a word, low to high: c0 c2 c4 c6 | c1 c3 c5 c7.)
* q = 3 (three words per 32 codes): word p (p = 0, 1, 2) holds unit-codes ``i = 10*p + j`` for
  ``j in 0..9`` at bit ``16*(j % 2) + 3*(j // 2)`` (bits 0-14 and 16-30; pairs read with shifts 0, 3, 6,
  9, 12). The two spare bits of each word (15 and 31) hold unit-codes 30 and 31 bit-sliced: bit b of code 30
  is bit 15 of word b, bit b of code 31 is bit 31 of word b. Pair (30, 31) decodes as
  ``((w0 >> 15) & 0x10001) | ((w1 >> 14) & 0x20002) | ((w2 >> 13) & 0x40004) | 0x64006400``.
  Cost: 3.0 bits per weight, ~1.1 integer ops per weight to decode.

The unit-code index i is the position inside the unit: weight ``k = 32*u + i``.

Everything here is plain torch (CPU or GPU) and exact; ``unpack_codes(pack_codes(c, q), q, K) == c``.
"""

from __future__ import annotations

import functools

import torch

from memtool.errors import UsageError

SUPPORTED_BITS = (2, 3, 4, 8)
UNIT = 32  # codes per unit
UNIT_ALIGN = 1  # units per row are padded to a multiple of this (1: no padding beyond the last unit)
ROW_BLOCK = 64  # rows per tile block (see "Tile layout")
UNIT_TILE = 4  # units per tile
LAYOUT_ID = f"tiles{ROW_BLOCK}x{UNIT_TILE}-unit{UNIT}"


def check_bits(bits: int) -> int:
    if int(bits) not in SUPPORTED_BITS:
        raise UsageError(f"unsupported bit width {bits}: expected one of {SUPPORTED_BITS}")
    return int(bits)


def num_units(in_features: int) -> int:
    """KU: units of 32 codes per row, padded to a multiple of UNIT_ALIGN."""
    ku = -(-int(in_features) // UNIT)
    return -(-ku // UNIT_ALIGN) * UNIT_ALIGN


def words_per_row(bits: int, in_features: int) -> int:
    return check_bits(bits) * num_units(in_features)


@functools.lru_cache(maxsize=None)
def fields(bits: int) -> tuple[tuple[int, int, int, int, int], ...]:
    """Bit fields of one unit: tuples ``(code_index, word, bit_pos, width, code_bit)``.

    Field = bits ``[code_bit, code_bit + width)`` of unit-code ``code_index`` stored at bits
    ``[bit_pos, bit_pos + width)`` of word ``word`` of the unit.
    """
    bits = check_bits(bits)
    out = []
    if bits == 3:
        for p in range(3):
            for j in range(10):
                out.append((10 * p + j, p, 16 * (j % 2) + 3 * (j // 2), 3, 0))
        for b in range(3):
            out.append((30, b, 15, 1, b))
            out.append((31, b, 31, 1, b))
    else:
        cpw = 32 // bits
        for p in range(bits):
            for j in range(cpw):
                out.append((cpw * p + j, p, 16 * (j % 2) + bits * (j // 2), bits, 0))
    return tuple(out)


@functools.lru_cache(maxsize=None)
def pair_slots(bits: int) -> tuple[tuple[int, int, int, int], ...]:
    """The pairs a kernel decodes with one shift + lop3: ``(word, shift, code_lo, code_hi)``.

    For 3 bits the last pair (codes 30, 31) is special (three words); it is listed as ``(-1, 0, 30, 31)``.
    """
    bits = check_bits(bits)
    out = []
    if bits == 3:
        for p in range(3):
            for t in range(5):
                out.append((p, 3 * t, 10 * p + 2 * t, 10 * p + 2 * t + 1))
        out.append((-1, 0, 30, 31))
    else:
        cpw = 32 // bits
        for p in range(bits):
            for t in range(cpw // 2):
                out.append((p, bits * t, cpw * p + 2 * t, cpw * p + 2 * t + 1))
    return tuple(out)


def word_offsets(n: int, bits: int, ku: int, device=None) -> torch.Tensor:
    """Flat position of every word: int64 ``[n, bits, ku]`` (word p of unit u of row n; see "Tile layout")."""
    rows = torch.arange(n, device=device, dtype=torch.int64)
    units = torch.arange(ku, device=device, dtype=torch.int64)
    r = rows % ROW_BLOCK
    b0 = rows - r
    R = torch.clamp(n - b0, max=ROW_BLOCK)[:, None, None]
    t0 = (units - units % UNIT_TILE)[None, None, :]
    U = torch.clamp(ku - t0, max=UNIT_TILE)
    p = torch.arange(bits, device=device, dtype=torch.int64)[None, :, None]
    return b0[:, None, None] * (bits * ku) + t0 * bits * R + (p * R + r[:, None, None]) * U + (units % UNIT_TILE)


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integer codes ``[N, K]`` (values in ``[0, 2^bits)``) into int32 ``[N, bits * KU]``."""
    bits = check_bits(bits)
    if codes.dim() != 2:
        raise UsageError(f"codes must be 2-D [out, in], got shape {tuple(codes.shape)}")
    n, k = codes.shape
    c = codes.to(torch.int64)
    if c.numel() and (int(c.min()) < 0 or int(c.max()) >= (1 << bits)):
        raise UsageError(f"codes out of range for {bits}-bit packing")
    ku = num_units(k)
    padded = torch.zeros(n, ku * UNIT, dtype=torch.int64, device=codes.device)
    padded[:, :k] = c
    units = padded.view(n, ku, UNIT)
    words = torch.zeros(bits, n, ku, dtype=torch.int64, device=codes.device)
    for i, p, pos, width, cb in fields(bits):
        v = units[:, :, i]
        if cb or width != bits:
            v = (v >> cb) & ((1 << width) - 1)
        words[p] |= v << pos
    words = torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)
    flat = torch.empty(n * bits * ku, dtype=torch.int32, device=codes.device)
    flat[word_offsets(n, bits, ku, codes.device).view(-1)] = words.permute(1, 0, 2).reshape(-1)
    return flat.view(n, bits * ku)


def unpack_codes(qweight: torch.Tensor, bits: int, in_features: int) -> torch.Tensor:
    """Exact inverse of :func:`pack_codes`: int32 ``[N, bits*KU]`` -> uint8 ``[N, in_features]``."""
    bits = check_bits(bits)
    n = qweight.shape[0]
    ku = num_units(in_features)
    if qweight.dim() != 2 or qweight.shape[1] != bits * ku:
        raise UsageError(
            f"qweight shape {tuple(qweight.shape)} does not match {bits}-bit codes of {in_features} inputs "
            f"(expected [{n}, {bits * ku}])"
        )
    flat = qweight.contiguous().view(-1)
    words = flat[word_offsets(n, bits, ku, qweight.device)].to(torch.int64) & 0xFFFFFFFF
    units = torch.zeros(n, ku, UNIT, dtype=torch.int64, device=qweight.device)
    for i, p, pos, width, cb in fields(bits):
        units[:, :, i] |= ((words[:, p] >> pos) & ((1 << width) - 1)) << cb
    return units.view(n, ku * UNIT)[:, :in_features].to(torch.uint8).contiguous()
