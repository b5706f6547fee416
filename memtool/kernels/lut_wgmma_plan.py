"""Host side of the Hopper wgmma LUT kernel (:mod:`memtool.kernels.lut_wgmma`): the decode plan, the k order of a
tile, the activation prep (a plain Triton kernel, runs under ``TRITON_INTERPRET``), the tile-major group
parameters, and a torch emulation of the decode that the CPU tests check against the packed codes.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from memtool.kernels import lut_layout
from memtool.kernels.lut_triton import device_table

BITS_OK = (2, 3, 4)
TILE_K = lut_layout.UNIT * lut_layout.UNIT_TILE  # 128 k per tile
MANTISSA = {torch.float16: 10, torch.bfloat16: 7}
MAGIC = {torch.float16: 1024.0, torch.bfloat16: 128.0}
PAD_TILES = 10  # zero tiles past K in the prepped activations and sums (the kernel reads up to 2 * (6 - 1) - 1 past)


# ----------------------------------------------------------------------------------------------- plans
@functools.lru_cache(maxsize=None)
def pair_plan(bits: int, mantissa: int) -> tuple[tuple[int, int, int], ...]:
    """Per pair T of a unit (:func:`lut_layout.pair_slots` order): ``(word, shift, f)``: the pair's low code
    is ``(word >> shift) >> f & mask`` and its high code 16 bits above; ``f + bits <= mantissa`` so the
    field can stay in place inside the mantissa. Shifts are shared: a word is shifted again only when the
    next field no longer fits. word -1: the bit-sliced 3-bit pair (codes 30, 31), decoded apart."""
    out = []
    base: dict[int, int] = {}
    for word, pos, _lo, _hi in lut_layout.pair_slots(bits):
        if word < 0:
            out.append((-1, 0, 0))
            continue
        sb = base.get(word, 0)
        if pos - sb + bits > mantissa:
            sb = pos
        base[word] = sb
        out.append((word, sb, pos - sb))
    return tuple(out)


def tile_perm(bits: int) -> list[int]:
    """k offset inside a 128-k tile (``unit * 32 + code``) of each column k' of the kernel's A operand.

    The kernel joins the 16 pairs of a unit into ``[rows, unit(4), half, b0, b1, b2, b3]`` (pair
    ``T = b0 + 2 b1 + 4 b2 + 8 b3``) and permutes it to ``k' = 64 b3 + 32 b0 + 16 b1 + 8 b2 + 2 unit + half``
    (the two lane bits of the fragment are the unit, the packed register pair is the pair's two halves)."""
    pairs = lut_layout.pair_slots(bits)
    perm = [0] * TILE_K
    for u in range(4):
        for t in range(16):
            b0, b1, b2, b3 = t & 1, (t >> 1) & 1, (t >> 2) & 1, (t >> 3) & 1
            for h in range(2):
                kp = 64 * b3 + 32 * b0 + 16 * b1 + 8 * b2 + 2 * u + h
                perm[kp] = u * 32 + pairs[t][2 + h]
    return perm


def emulate_tile(words: torch.Tensor, bits: int, dtype: torch.dtype, raw: bool = False) -> torch.Tensor:
    """What the kernel's decode computes for one tile, in torch: ``words`` int64 ``[R, bits, 4]`` (plane
    words of R rows x 4 units) -> codes ``[R, 128]`` in k' order (float64); ``raw``: the raw decode's
    magic-number values ``magic + code * 2^f`` instead (the prep scales activation k' by ``2^-f``). Used by
    tests to check :func:`pair_plan`, :func:`tile_perm` and :func:`tile_shift` against the packed codes."""
    mb = MANTISSA[dtype]
    magic = MAGIC[dtype]
    plan = pair_plan(bits, mb)
    w = words & 0xFFFFFFFF
    mask = (1 << bits) - 1
    pairs = []
    for t, (word, sb, f) in enumerate(plan):
        if word < 0:  # 3-bit codes 30/31: bit i of each code is bit 15 / 31 of word i
            v = ((w[:, 0] >> 15) & 0x10001) | ((w[:, 1] >> 14) & 0x20002) | ((w[:, 2] >> 13) & 0x40004)
            f = 0
        else:
            v = (w[:, word] >> sb) & ((mask << f) * 0x10001)
        lo = (v & 0xFFFF).double() + magic  # the mantissa bits on top of the magic number
        hi = (v >> 16).double() + magic
        assert bool((lo < 2 * magic).all()) and bool((hi < 2 * magic).all()), "field leaves the mantissa"
        sc = 2.0**-f
        if raw:
            pairs.append(torch.stack([lo, hi], -1))
        else:
            pairs.append(torch.stack([lo * sc - magic * sc, hi * sc - magic * sc], -1))  # [R, 4, 2]
    j = torch.stack(pairs, -1)  # [R, 4(u), 2(h), 16(T)]
    j = j.reshape(*j.shape[:3], 2, 2, 2, 2)  # T bits: last axis fastest -> [.., b3, b2, b1, b0]
    r = j.shape[0]
    j = j.reshape(r, 2, 2, 2, 2, 2, 2, 2)  # [R, u1, u0, h, b3, b2, b1, b0]
    j = j.permute(0, 4, 7, 6, 5, 1, 2, 3)  # -> [R, b3, b0, b1, b2, u1, u0, h]
    return j.reshape(r, TILE_K)


def tile_params(w) -> torch.Tensor:
    """The affine weight's group scales and biases as tile-major int32 words ``[N/64, NT + PAD_TILES, 64]``
    (``s | b << 16``, fp16 bit patterns of tile t's group; every group lies in whole tiles: 128 * 2^i or
    per-channel): the 64 rows of a row block share a group per tile, so a tile's parameters are 256 contiguous
    bytes (the ``[N, G]`` tensors put them G*2 bytes apart: one 32-byte sector read per 2-byte value; measured on
    an H200: ~9 of 49 us at M=1, 8192x28672), and every tile has its own (the kernel's sources move a constant
    stride a tile). Made once per weight and cached on it (``w.cache``): 4 bytes per tile and row more memory
    (0.25 bits per weight). PAD_TILES zero tiles a row block: the kernel reads the parameters of a few tiles past
    the last one unmasked (and scales zero activations with them)."""
    t = w.cache.get("wgmma_params")
    if t is None:
        n, k = w.out_features, w.in_features
        nt = -(-k // TILE_K)
        grp = torch.zeros(nt, dtype=torch.long) if w.groups == 1 else torch.arange(nt) * TILE_K // w.group_size
        s = w.scales.to(torch.float16).view(torch.int16).to(torch.int32) & 0xFFFF
        b = w.biases.to(torch.float16).view(torch.int16).to(torch.int32) & 0xFFFF
        p = (s | (b << 16))[:, grp.to(s.device)]  # [N, NT]
        t = torch.zeros(n // 64, nt + PAD_TILES, 64, dtype=torch.int32, device=s.device)
        t[:, :nt] = p.view(n // 64, 64, nt).transpose(1, 2)
        w.cache["wgmma_params"] = t
    return t


# ------------------------------------------------------------------------------------------------ prep
def tile_shift(bits: int, mantissa: int) -> list[int]:
    """Bit position ``f`` (in the mantissa) of the field of each column k' of a tile (:func:`tile_perm` order):
    the raw decode leaves the code there, so the prep scales activation k' by ``2^-f`` to match."""
    plan = pair_plan(bits, mantissa)
    out = [0] * TILE_K
    for kp in range(TILE_K):
        t = ((kp >> 5) & 1) | ((kp >> 4) & 1) << 1 | ((kp >> 3) & 1) << 2 | ((kp >> 6) & 1) << 3
        out[kp] = plan[t][2]
    return out


@triton.jit
def _prep_kernel(x_ptr, scl_ptr, xp_ptr, xs_ptr, M, K, NT, NTP, stride_xm, MAGIC, BM: tl.constexpr,
                 SR: tl.constexpr, TB: tl.constexpr, RAW: tl.constexpr, PDL: tl.constexpr,
                 WAIT: tl.constexpr):  # fmt: skip
    """x [M, K] -> xp [MB, NTP, BM, 128]: row m of tile t of row block mb = x[mb * BM + m] in the kernel's k'
    order: column k' = x[t*128 + tile_perm[k']] (0 past K), times ``scl[k'] = 2^-f`` with RAW (exact: a power of
    two); RAW also writes xs [MB, NTP, SR, 2] = (sum of the tile's x, MAGIC * sum of its scaled x) in fp32, the
    terms the kernel's epilogue needs (rows BM..SR-1 unused, never written: a tile is 256 bytes like a tile's
    parameters). Zero past row M and past tile NT (NTP - NT tiles): the kernel copies tiles unmasked, each a
    constant stride from the last, and a tile of zeros adds nothing. One program: TB tiles of one row. PDL: let
    the kernel launched after this one with programmatic dependent launch start now (it waits for our results).
    WAIT: this prep was itself launched that way (it may start before the grid that wrote x has finished):
    ``griddepcontrol.wait`` before anything is read or written."""
    if PDL:
        tl.inline_asm_elementwise("griddepcontrol.launch_dependents; // $0", "=r", [], dtype=tl.int32,
                                  is_pure=False, pack=1)  # fmt: skip
    if WAIT:
        tl.inline_asm_elementwise("griddepcontrol.wait; // $0", "=r", [], dtype=tl.int32, is_pure=False, pack=1)
    m = tl.program_id(1)
    b = tl.program_id(0) * TB + tl.arange(0, TB)
    j = tl.arange(0, 128)
    # tile_perm as arithmetic (no dependent table load before the x load): pair T of unit u holds codes 2T, 2T+1
    pt = ((j >> 5) & 1) | ((j >> 4) & 1) << 1 | ((j >> 3) & 1) << 2 | ((j >> 6) & 1) << 3
    k = b[:, None] * 128 + (((j >> 1) & 3) * 32 + 2 * pt + (j & 1))[None, :]
    bm = ((b < NT) & (b * 0 + m < M))[:, None]  # past M or past K: zeros
    x = tl.load(x_ptr + m.to(tl.int64) * stride_xm + k, mask=bm & (k < K), other=0.0)
    row = ((m // BM).to(tl.int64) * NTP + b) * BM + m % BM  # [TB] rows of xp [MB * NTP * BM, 128]
    if RAW:
        xq = (x.to(tl.float32) * tl.load(scl_ptr + j)[None, :]).to(x.dtype)
        srow = ((m // BM).to(tl.int64) * NTP + b) * SR + m % BM  # xs [MB * NTP * SR, 2]
        tl.store(xs_ptr + srow * 2, tl.sum(x.to(tl.float32), axis=1), mask=b < NTP)
        tl.store(xs_ptr + srow * 2 + 1, tl.sum(xq.to(tl.float32), axis=1) * MAGIC, mask=b < NTP)
    else:
        xq = x
    tl.store(xp_ptr + row[:, None] * 128 + j[None, :], xq, mask=(b < NTP)[:, None])


def prep_activations(x2: torch.Tensor, bits: int, raw: bool = True, bm: int = 0, pdl: bool = False, tb: int = 4,
                     num_warps: int = 1, wait: bool = False) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """x2 [M, K] -> (xp [MB, NT + PAD_TILES, bm, 128]: the activations by blocks of ``bm`` rows (the kernel's BM;
    default M) and tiles of 128 k, each tile in the kernel's k' order (:func:`tile_perm`), scaled by ``2^-f`` per
    column when ``raw`` (:func:`tile_shift`); xs [MB, NT + PAD_TILES, max(bm, 32), 2] fp32 = (tile sum of x,
    magic * tile sum of xp) in rows 0..bm-1, the others unused), zero past row M and past tile NT. ``pdl``: the
    next kernel is launched with programmatic dependent launch and may start while this one runs (GPU only);
    ``wait``: launch this one that way too (it waits for the grid before it; GPU only).
    ``tb`` tiles of one row a program, ``num_warps`` warps (one warp: measured 0.3-0.4 us faster than 4 on an H100,
    M = 1 and 16; 4 tiles: faster than 2, 8 or 16)."""
    m, k = x2.shape
    bm = bm or m
    mb = -(-m // bm)
    nt = -(-k // TILE_K)
    ntp = nt + PAD_TILES
    xp = torch.empty(mb, ntp, bm, TILE_K, dtype=x2.dtype, device=x2.device)
    sr = max(bm, 32)
    xs = torch.empty(mb, ntp, sr, 2, dtype=torch.float32, device=x2.device) if raw else xp
    mant = MANTISSA.get(x2.dtype, 10)
    scl = device_table(f"wgmma_scale{mant}", bits, x2.device, lambda b: [2.0**-f for f in tile_shift(b, mant)],
                       torch.float32)  # fmt: skip
    wait = wait and x2.is_cuda
    _prep_kernel[(triton.cdiv(ntp, tb), mb * bm)](  # PDL is GPU code (inline PTX)
        x2, scl, xp, xs, m, k, nt, ntp, x2.stride(0), MAGIC.get(x2.dtype, 1.0), BM=bm, SR=sr, TB=tb, RAW=raw,
        PDL=pdl and x2.is_cuda, WAIT=wait, num_warps=num_warps, **({"launch_pdl": True} if wait else {}))  # fmt: skip
    return xp, xs


def _fma_asm_text(f, bf16, fold):
    """PTX: two codes at bit f of a magic-number pair -> exact codes: ``v * 2^-f - magic * 2^-f`` (both
    constants are signed powers of two, magic = 2^10 fp16, 2^7 bf16, written as 16-bit patterns); with
    ``fold`` also the weights ``code * s + b`` ($3 = (s, s), $4 = (b, b); one rounding)."""
    ebits, bias_e, mag = (8, 127, 7) if bf16 else (5, 15, 10)
    mant = 15 - ebits
    sc = (bias_e - f) << mant  # 2^-f
    c = (1 << 15) | ((bias_e + mag - f) << mant)  # -2^(mag - f)
    op = "fma.rn.bf16x2" if bf16 else "fma.rn.f16x2"
    body = "mov.b32 s, 0x%04x%04x; mov.b32 c, 0x%04x%04x; %s r, $2, s, c; " % (sc, sc, c, c, op)
    if fold:
        body += "%s r, r, $3, $4; " % op
    return "{ .reg .b32 s, c, r; " + body + "mov.b32 {$0, $1}, r; }"
