"""Triton kernels for ``y = x @ W^T`` with W a :class:`~memtool.kernels.lut_types.LutWeight`.

Four paths read the packed words of :mod:`memtool.kernels.lut_layout` (tile layout: a block of 64 rows x 4
units of one plane is one contiguous run; 16-byte vector loads) and decode in registers, fp32 accumulation:

* ``wgmma`` (Hopper, affine 2/3/4-bit, whole tiles; :mod:`memtool.kernels.lut_wgmma`, Gluon): the decoded
  codes are wgmma's A operand in registers, no layout conversion; the tuner's pick at every M on H100/H200
  (3-bit: 4.3x / 3.9x / 2.25x cuBLAS fp16 at M = 1 / 16 / 64 on an H100, 3.6x / 3.0x / 1.65x on an H200).
* ``fast`` (affine weights, small M; :mod:`memtool.kernels.lut_gemv`): one ``lop3`` per code into an fp32
  mantissa, no converts; the first choice at M=1 off Hopper (2.0-2.2x cuBLAS fp16 on an H200 at 3 bits).
* ``_gemv_kernel`` (small M, no tensor cores; one program per activation row x BN output rows x a K-range
  of units). Split-K partial sums go to an fp32 ``[S, M, N]`` buffer that ``_reduce_kernel`` adds up
  (deterministic). Per word, one shift + one AND/OR put two codes into the two fp16 halves of
  ``0x6400|c`` (= 1024 + c, exact) and one ``cvt`` per half gives fp32, so affine weights cost ~1 integer
  op + 1 convert + 1 FMA per weight. Activations are read as int32 pairs (two fp16/bf16 values) in the
  codes' (permuted) order and held once per thread (a 1-D slice of the tile layout), so nothing is
  shuffled between threads. Per unit (32 codes, always inside one group) the epilogue applies
  ``scale * sum(x*(1024+c)) + (bias - 1024*scale) * sum(x)``. bcq and table weights are decoded to real
  fp32 weights per element instead (bit sums / a table gather). The next tile's words are prefetched
  into registers while the current one is decoded.
* ``_dot_kernel`` (tensor cores, any M; tuned against the GEMV for M <= 16). ``_gather_kernel`` first
  gathers the activations into the tile's (permuted) order, so the kernel reads contiguous vectors. The
  same pair decode produces a [BN, 32*BU] tile (16 pairs joined and reshaped). Every tile lies inside one
  group, so exact tiles go into ``tl.dot`` and the group's parameters scale the fp32 results:
  affine: codes, ``s*dot + b*sum(x)`` (``sum(x)`` comes from a dot with a ones tile, no shuffles);
  table: ``table[code]`` values times s; bcq: one dot per bit plane (0/1 tiles) times ``2*alpha``.

On the GPU the fp16 halves are split with ``tl.inline_asm_elementwise`` (``mov.b32 {lo, hi}`` +
``cvt``/``sub.f16x2``); under ``TRITON_INTERPRET=1`` (tests) a pure-integer decode computes the same
values and everything is upcast to fp32 right after loading (the interpreter mishandles bf16).

Launch configurations are chosen per shape by timing the candidates on the first call on a GPU, each in a
CUDA graph over rotated copies of the weight (GPU time only, weights read from DRAM as in a model; see
:func:`_rotation`; ``MEMTOOL_LUT_TUNE=0``: the first candidate that compiles; ``MEMTOOL_LUT_ALL_PATHS=1``:
time the Triton paths next to the wgmma kernel on Hopper; inside someone else's
graph capture: the first candidate, tuned later); the choice is cached in-process.
Measured numbers and the known gaps: docs/bench/lut_kernels.md.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import torch
import triton
import triton.language as tl

from memtool.kernels import lut_layout
from memtool.kernels.lut_types import LutWeight

KIND_ID = {"affine": 0, "bcq": 1, "table": 2}


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


# ----------------------------------------------------------------------------------------------- decode
@triton.jit
def _sel(w0, w1, w2, w3, w4, w5, w6, w7, P: tl.constexpr):
    if P == 0:
        r = w0
    elif P == 1:
        r = w1
    elif P == 2:
        r = w2
    elif P == 3:
        r = w3
    elif P == 4:
        r = w4
    elif P == 5:
        r = w5
    elif P == 6:
        r = w6
    else:
        r = w7
    return r


@triton.jit
def _pair_bits(w0, w1, w2, w3, w4, w5, w6, w7, T: tl.constexpr, BITS: tl.constexpr):
    """int32 with code(2t) in bits 0.. and code(2t+1) in bits 16.. (other bits zero)."""
    if BITS == 3:
        if T == 15:
            v = ((w0 >> 15) & 0x10001) | ((w1 >> 14) & 0x20002) | ((w2 >> 13) & 0x40004)
        else:
            w = _sel(w0, w1, w2, w3, w4, w5, w6, w7, T // 5)
            v = (w >> (3 * (T % 5))) & 0x70007
    else:
        w = _sel(w0, w1, w2, w3, w4, w5, w6, w7, T // (16 // BITS))
        v = (w >> (BITS * (T % (16 // BITS)))) & (((1 << BITS) - 1) * 0x10001)
    return v


@triton.jit
def _pair_magic_f32(v, USE_ASM: tl.constexpr):
    """(1024 + lo, 1024 + hi) as fp32 from the two 16-bit halves of v."""
    if USE_ASM:
        v = v | 0x64006400
        lo, hi = tl.inline_asm_elementwise(
            "{ .reg .b16 l, h; mov.b32 {l, h}, $2; cvt.f32.f16 $0, l; cvt.f32.f16 $1, h; }",
            "=f,=f,r",
            [v],
            dtype=(tl.float32, tl.float32),
            is_pure=True,
            pack=1,
        )
    else:
        lo = (v & 0xFFFF).to(tl.float32) + 1024.0
        hi = ((v >> 16) & 0xFFFF).to(tl.float32) + 1024.0
    return lo, hi


@triton.jit
def _pair_codes_dt(v, DT: tl.constexpr, BITS: tl.constexpr, USE_ASM: tl.constexpr):
    """The two codes as exact DT (fp16 / bf16 / fp32) numbers."""
    if USE_ASM and DT == tl.float16:
        v = v | 0x64006400
        lo, hi = tl.inline_asm_elementwise(
            "{ .reg .b32 k, t; mov.b32 k, 0x64006400; sub.f16x2 t, $2, k; mov.b32 {$0, $1}, t; }",
            "=h,=h,r",
            [v],
            dtype=(tl.int16, tl.int16),
            is_pure=True,
            pack=1,
        )
        lo = lo.to(tl.float16, bitcast=True)
        hi = hi.to(tl.float16, bitcast=True)
    elif USE_ASM and DT == tl.bfloat16 and BITS <= 4:
        v = v | 0x43004300
        lo, hi = tl.inline_asm_elementwise(
            "{ .reg .b32 o, k, t; mov.b32 o, 0x3F803F80; mov.b32 k, 0xC300C300; fma.rn.bf16x2 t, $2, o, k; "
            "mov.b32 {$0, $1}, t; }",
            "=h,=h,r",
            [v],
            dtype=(tl.int16, tl.int16),
            is_pure=True,
            pack=1,
        )
        lo = lo.to(tl.bfloat16, bitcast=True)
        hi = hi.to(tl.bfloat16, bitcast=True)
    else:
        lo = (v & 0xFFFF).to(tl.float32).to(DT)
        hi = ((v >> 16) & 0xFFFF).to(tl.float32).to(DT)
    return lo, hi


@triton.jit
def _weight_of(c, s, b, a0, a1, a2, a3, a4, a5, a6, a7, tab_ptr, tbase, KIND: tl.constexpr, BITS: tl.constexpr):
    """Real fp32 weight of integer codes c. affine: s*c+b; bcq: b + sum 2*a_i*bit_i (b = offset - sum a);
    table: s * table[tbase + c]."""
    if KIND == 0:
        w = s * c.to(tl.float32) + b
    elif KIND == 1:
        w = b + a0 * (c & 1).to(tl.float32) + a1 * ((c >> 1) & 1).to(tl.float32)
        if BITS > 2:
            w += a2 * ((c >> 2) & 1).to(tl.float32)
        if BITS > 3:
            w += a3 * ((c >> 3) & 1).to(tl.float32)
        if BITS > 4:
            w += a4 * ((c >> 4) & 1).to(tl.float32)
            w += a5 * ((c >> 5) & 1).to(tl.float32)
            w += a6 * ((c >> 6) & 1).to(tl.float32)
            w += a7 * ((c >> 7) & 1).to(tl.float32)
    else:
        w = s * tl.load(tab_ptr + tbase + c).to(tl.float32)
    return w


@triton.jit
def _pair_weights(v, s, b, a0, a1, a2, a3, a4, a5, a6, a7, tab_ptr, tbase, KIND: tl.constexpr, BITS: tl.constexpr):
    lo = _weight_of(v & 0xFFFF, s, b, a0, a1, a2, a3, a4, a5, a6, a7, tab_ptr, tbase, KIND, BITS)
    hi = _weight_of((v >> 16) & 0xFFFF, s, b, a0, a1, a2, a3, a4, a5, a6, a7, tab_ptr, tbase, KIND, BITS)
    return lo, hi


@triton.jit
def _load_params(p0_ptr, p1_ptr, rows, grp, G, pmask, KIND: tl.constexpr, BITS: tl.constexpr, TAB_SN, TAB_SG):
    """Per (row, unit) parameters [BN, BU] fp32: s, b (bcq: b = offset - sum alpha), 2*alpha_i, table base."""
    poff = rows[:, None] * G + grp[None, :]
    s = tl.load(p0_ptr + poff, mask=pmask, other=0.0).to(tl.float32)
    b = s
    a0 = s
    a1 = s
    a2 = s
    a3 = s
    a4 = s
    a5 = s
    a6 = s
    a7 = s
    tbase = poff * 0
    if KIND == 0:
        b = tl.load(p1_ptr + poff, mask=pmask, other=0.0).to(tl.float32)
    elif KIND == 1:
        # p0 = offsets, p1 = alphas [N, G, BITS]
        aoff = poff * BITS
        a0 = tl.load(p1_ptr + aoff, mask=pmask, other=0.0).to(tl.float32)
        a1 = tl.load(p1_ptr + aoff + 1, mask=pmask, other=0.0).to(tl.float32)
        b = s - a0 - a1
        if BITS > 2:
            a2 = tl.load(p1_ptr + aoff + 2, mask=pmask, other=0.0).to(tl.float32)
            b -= a2
        if BITS > 3:
            a3 = tl.load(p1_ptr + aoff + 3, mask=pmask, other=0.0).to(tl.float32)
            b -= a3
        if BITS > 4:
            a4 = tl.load(p1_ptr + aoff + 4, mask=pmask, other=0.0).to(tl.float32)
            a5 = tl.load(p1_ptr + aoff + 5, mask=pmask, other=0.0).to(tl.float32)
            a6 = tl.load(p1_ptr + aoff + 6, mask=pmask, other=0.0).to(tl.float32)
            a7 = tl.load(p1_ptr + aoff + 7, mask=pmask, other=0.0).to(tl.float32)
            b = b - a4 - a5 - a6 - a7
        a0 = 2.0 * a0
        a1 = 2.0 * a1
        a2 = 2.0 * a2
        a3 = 2.0 * a3
        a4 = 2.0 * a4
        a5 = 2.0 * a5
        a6 = 2.0 * a6
        a7 = 2.0 * a7
    else:
        tbase = tl.where(pmask, rows[:, None] * TAB_SN + grp[None, :] * TAB_SG, 0)  # in bounds when masked
    return s, b, a0, a1, a2, a3, a4, a5, a6, a7, tbase


@triton.jit
def _load_words(q_ptr, rows, units, N, KU, wmask, BITS: tl.constexpr, FULL: tl.constexpr):
    """The q words of [BN rows] x [BU units] from the tile layout (:func:`lut_layout.word_offsets`).
    FULL (N % 64 == 0 and KU % 4 == 0): every block and tile is whole, so the strides are constants and
    runs of 4 units are 16-byte vectors."""
    r = rows % 64
    b0 = (rows - r).to(tl.int64)
    ui = units % 4
    t0 = (units // 4) * 4  # (not units - ui: the compiler must see t0 constant over runs of 4 to vectorize)
    if FULL:
        R = 64
        U = 4
    else:
        R = tl.maximum(tl.minimum(N - b0, 64), 1)[:, None]
        U = tl.maximum(tl.minimum(KU - t0, 4), 1)[None, :]
    base = q_ptr + b0[:, None] * (BITS * KU) + t0[None, :] * BITS * R + r[:, None] * U + ui[None, :]
    PS = R * U  # plane stride inside a tile
    w0 = tl.load(base, mask=wmask, other=0)
    w1 = tl.load(base + PS, mask=wmask, other=0)
    w2 = w0
    w3 = w0
    w4 = w0
    w5 = w0
    w6 = w0
    w7 = w0
    if BITS > 2:
        w2 = tl.load(base + 2 * PS, mask=wmask, other=0)
    if BITS > 3:
        w3 = tl.load(base + 3 * PS, mask=wmask, other=0)
    if BITS > 4:
        w4 = tl.load(base + 4 * PS, mask=wmask, other=0)
        w5 = tl.load(base + 5 * PS, mask=wmask, other=0)
        w6 = tl.load(base + 6 * PS, mask=wmask, other=0)
        w7 = tl.load(base + 7 * PS, mask=wmask, other=0)
    return w0, w1, w2, w3, w4, w5, w6, w7


@triton.jit
def _tile_words(q_ptr, rows, rmask, u0, u_end, N, KU, BITS: tl.constexpr, FULL: tl.constexpr, EVEN: tl.constexpr,
                BU: tl.constexpr):  # fmt: skip
    """The words of the BU-unit tile starting at u0, zeros past u_end. EVEN: the tile is whole or entirely
    past u_end (the uniform mask is still a tensor: the interpreter needs one)."""
    units = tl.max_contiguous(tl.multiple_of(u0 + tl.arange(0, BU), BU), BU)
    if EVEN:
        mask = rmask[:, None] & (tl.full([1, BU], 0, tl.int32) + u0 < u_end)
    else:
        mask = rmask[:, None] & (units < u_end)[None, :]
    return _load_words(q_ptr, rows, units, N, KU, mask, BITS, FULL)


# ------------------------------------------------------------------------------------------------- GEMV
@triton.jit
def _x_pair(xw, XBF16: tl.constexpr, USE_ASM: tl.constexpr):
    """Two fp16/bf16 activations packed in one int32 -> (lo, hi) fp32."""
    if XBF16:
        lo = (xw << 16).to(tl.float32, bitcast=True)
        hi = (xw & -65536).to(tl.float32, bitcast=True)
    elif USE_ASM:
        lo, hi = tl.inline_asm_elementwise(
            "{ .reg .b16 l, h; mov.b32 {l, h}, $2; cvt.f32.f16 $0, l; cvt.f32.f16 $1, h; }",
            "=f,=f,r",
            [xw],
            dtype=(tl.float32, tl.float32),
            is_pure=True,
            pack=1,
        )
    else:
        lo = (xw & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
        hi = ((xw >> 16) & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
    return lo, hi


@triton.jit
def _gemv_kernel(
    x_ptr, q_ptr, p0_ptr, p1_ptr, tab_ptr, out_ptr,
    M, N, K, KU, G, GS, UPS, stride_xm, stride_os, TAB_SN, TAB_SG,
    BITS: tl.constexpr, KIND: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BU: tl.constexpr,
    USE_ASM: tl.constexpr, EVEN: tl.constexpr, XBF16: tl.constexpr, XFULL: tl.constexpr, FULL: tl.constexpr,
):  # fmt: skip
    """One activation row (program axis 2) x BN output rows x a K-range of units. All tensors are
    [BN, BU] in one layout (activations are loaded broadcast over rows, two per 32-bit load) so nothing
    is shuffled between threads. x_ptr points at int32 words (pairs of fp16/bf16); stride_xm in words."""
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    m = tl.program_id(2)
    rows = pid_n * BN + tl.arange(0, BN)
    rmask = rows < N
    xrow = x_ptr + m.to(tl.int64) * stride_xm
    acc = tl.zeros([BN, BU], dtype=tl.float32)
    u_beg = pid_s * UPS
    u_end = tl.minimum(u_beg + UPS, KU)
    # software pipelining: the next tile's words are loaded while this one is decoded
    n0, n1, n2, n3, n4, n5, n6, n7 = _tile_words(q_ptr, rows, rmask, u_beg, u_end, N, KU, BITS, FULL, EVEN, BU)
    for u0 in range(u_beg, u_end, BU):
        w0, w1, w2, w3, w4, w5, w6, w7 = n0, n1, n2, n3, n4, n5, n6, n7
        units = tl.max_contiguous(tl.multiple_of(u0 + tl.arange(0, BU), BU), BU)
        if EVEN:
            wmask = rmask[:, None]
        else:
            wmask = rmask[:, None] & (units < u_end)[None, :]
        n0, n1, n2, n3, n4, n5, n6, n7 = _tile_words(q_ptr, rows, rmask, u0 + BU, u_end, N, KU, BITS, FULL, EVEN, BU)
        grp = (units * 32) // GS
        pmask = wmask & (grp < G)[None, :]
        s, b, a0, a1, a2, a3, a4, a5, a6, a7, tbase = _load_params(
            p0_ptr, p1_ptr, rows, grp, G, pmask, KIND, BITS, TAB_SN, TAB_SG
        )
        part = tl.zeros([BN, BU], dtype=tl.float32)
        xbase = xrow + units * 16  # [BU] int32 words = activation pairs (loaded once per thread, not per row)
        for T in tl.static_range(16):
            # word offset of the pair's low code (3 bits: 10 codes and 5 pairs a word; pair 15 -> code 30)
            XO = (16 // BITS) * (T // (16 // BITS)) + (T % (16 // BITS))
            if XFULL:
                xw = tl.load(xbase + XO)
            else:
                xw = tl.load(xbase + XO, mask=units * 32 + 2 * XO < K, other=0)
            xl, xh = _x_pair(xw, XBF16, USE_ASM)
            v = _pair_bits(w0, w1, w2, w3, w4, w5, w6, w7, T, BITS)
            if KIND == 0:
                lo, hi = _pair_magic_f32(v, USE_ASM)
            else:
                lo, hi = _pair_weights(v, s, b, a0, a1, a2, a3, a4, a5, a6, a7, tab_ptr, tbase, KIND, BITS)
            part += lo * xl[None, :]
            part += hi * xh[None, :]
        if KIND == 0:
            # sum of the unit's activations (x past K is 0: the wrapper pads odd K)
            ks = units[:, None] * 16 + tl.arange(0, 16)[None, :]
            if XFULL:
                xs_w = tl.load(xrow + ks)
            else:
                xs_w = tl.load(xrow + ks, mask=ks * 2 < K, other=0)
            xs_l, xs_h = _x_pair(xs_w, XBF16, USE_ASM)
            sx = tl.sum(xs_l + xs_h, axis=1)
            acc += part * s + (b - 1024.0 * s) * sx[None, :]
        else:
            acc += part
    y = tl.sum(acc, axis=1)
    optr = out_ptr + pid_s * stride_os + m.to(tl.int64) * N + rows
    tl.store(optr, y.to(out_ptr.dtype.element_ty), mask=rmask)


# -------------------------------------------------------------------------------------------------- dot
@triton.jit
def _jpair(w0, w1, w2, w3, w4, w5, w6, w7, tab_ptr, tb, T: tl.constexpr, BITS: tl.constexpr, MODE: tl.constexpr,
           BIT: tl.constexpr, DT: tl.constexpr, USE_ASM: tl.constexpr):  # fmt: skip
    """Pair T as DT values joined on a new last axis. MODE 0: the codes; 1: table[tb + code];
    2: bit BIT of the codes (0 / 1)."""
    v = _pair_bits(w0, w1, w2, w3, w4, w5, w6, w7, T, BITS)
    if MODE == 0:
        lo, hi = _pair_codes_dt(v, DT, BITS, USE_ASM)
    elif MODE == 2:
        lo, hi = _pair_codes_dt((v >> BIT) & 0x10001, DT, 2, USE_ASM)
    else:
        lo = tl.load(tab_ptr + tb + (v & 0xFFFF)).to(tl.float32).to(DT)
        hi = tl.load(tab_ptr + tb + (v >> 16)).to(tl.float32).to(DT)
    return tl.join(lo, hi)


@triton.jit
def _unit_tile(w0, w1, w2, w3, w4, w5, w6, w7, tab_ptr, tb, BITS: tl.constexpr, MODE: tl.constexpr, BIT: tl.constexpr,
               DT: tl.constexpr, USE_ASM: tl.constexpr):  # fmt: skip
    """[BN, 32*BU] tile (DT): the 16 pairs joined into [BN, BU, 2, 2, 2, 2, 2] (order: ``dot_perm``)."""
    p0 = _jpair(w0, w1, w2, w3, w4, w5, w6, w7, tab_ptr, tb, 0, BITS, MODE, BIT, DT, USE_ASM)
    p1 = _jpair(w0, w1, w2, w3, w4, w5, w6, w7, tab_ptr, tb, 1, BITS, MODE, BIT, DT, USE_ASM)
    p2 = _jpair(w0, w1, w2, w3, w4, w5, w6, w7, tab_ptr, tb, 2, BITS, MODE, BIT, DT, USE_ASM)
    p3 = _jpair(w0, w1, w2, w3, w4, w5, w6, w7, tab_ptr, tb, 3, BITS, MODE, BIT, DT, USE_ASM)
    p4 = _jpair(w0, w1, w2, w3, w4, w5, w6, w7, tab_ptr, tb, 4, BITS, MODE, BIT, DT, USE_ASM)
    p5 = _jpair(w0, w1, w2, w3, w4, w5, w6, w7, tab_ptr, tb, 5, BITS, MODE, BIT, DT, USE_ASM)
    p6 = _jpair(w0, w1, w2, w3, w4, w5, w6, w7, tab_ptr, tb, 6, BITS, MODE, BIT, DT, USE_ASM)
    p7 = _jpair(w0, w1, w2, w3, w4, w5, w6, w7, tab_ptr, tb, 7, BITS, MODE, BIT, DT, USE_ASM)
    p8 = _jpair(w0, w1, w2, w3, w4, w5, w6, w7, tab_ptr, tb, 8, BITS, MODE, BIT, DT, USE_ASM)
    p9 = _jpair(w0, w1, w2, w3, w4, w5, w6, w7, tab_ptr, tb, 9, BITS, MODE, BIT, DT, USE_ASM)
    p10 = _jpair(w0, w1, w2, w3, w4, w5, w6, w7, tab_ptr, tb, 10, BITS, MODE, BIT, DT, USE_ASM)
    p11 = _jpair(w0, w1, w2, w3, w4, w5, w6, w7, tab_ptr, tb, 11, BITS, MODE, BIT, DT, USE_ASM)
    p12 = _jpair(w0, w1, w2, w3, w4, w5, w6, w7, tab_ptr, tb, 12, BITS, MODE, BIT, DT, USE_ASM)
    p13 = _jpair(w0, w1, w2, w3, w4, w5, w6, w7, tab_ptr, tb, 13, BITS, MODE, BIT, DT, USE_ASM)
    p14 = _jpair(w0, w1, w2, w3, w4, w5, w6, w7, tab_ptr, tb, 14, BITS, MODE, BIT, DT, USE_ASM)
    p15 = _jpair(w0, w1, w2, w3, w4, w5, w6, w7, tab_ptr, tb, 15, BITS, MODE, BIT, DT, USE_ASM)
    q0 = tl.join(p0, p1)
    q1 = tl.join(p2, p3)
    q2 = tl.join(p4, p5)
    q3 = tl.join(p6, p7)
    q4 = tl.join(p8, p9)
    q5 = tl.join(p10, p11)
    q6 = tl.join(p12, p13)
    q7 = tl.join(p14, p15)
    r0 = tl.join(q0, q1)
    r1 = tl.join(q2, q3)
    r2 = tl.join(q4, q5)
    r3 = tl.join(q6, q7)
    j4a = tl.join(r0, r1)
    j4b = tl.join(r2, r3)
    t = tl.join(j4a, j4b)  # [BN, BU, 2, 2, 2, 2, 2]
    BN: tl.constexpr = t.shape[0]
    BU: tl.constexpr = t.shape[1]
    return tl.reshape(t, (BN, BU * 32))


@triton.jit
def _dot(xt, tile, F32_DOT: tl.constexpr):
    if F32_DOT:
        d = tl.dot(xt, tl.trans(tile), input_precision="ieee")
    else:
        d = tl.dot(xt, tl.trans(tile))
    return d


@triton.jit
def _dot_kernel(
    x_ptr, q_ptr, p0_ptr, p1_ptr, tab_ptr, perm_ptr, out_ptr,
    M, N, K, KU, G, GS, UPS, stride_xm, stride_os, TAB_SN, TAB_SG,
    BITS: tl.constexpr, KIND: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BU: tl.constexpr,
    DT: tl.constexpr, USE_ASM: tl.constexpr, F32_DOT: tl.constexpr, FULL: tl.constexpr,
):  # fmt: skip
    """BM activation rows x BN output rows x a K-range of units, tensor cores. Every tile (BU units) lies
    in one group (BU * 32 divides the group size, or there is one group), so the exact code / table /
    bit tiles go into ``tl.dot`` and the group's parameters scale the fp32 dot results."""
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    pid_m = tl.program_id(2)
    BK: tl.constexpr = BU * 32
    rows = pid_n * BN + tl.arange(0, BN)
    rmask = rows < N
    ms = pid_m * BM + tl.arange(0, BM)
    mmask = ms < M
    xrow = x_ptr + ms.to(tl.int64)[:, None] * stride_xm
    kk = tl.arange(0, BK)
    acc = tl.zeros([BM, BN], dtype=tl.float32)
    u_beg = pid_s * UPS
    u_end = tl.minimum(u_beg + UPS, KU)
    ones = tl.full([BN, BK], 1.0, DT)
    units = tl.max_contiguous(tl.multiple_of(u_beg + tl.arange(0, BU), BU), BU)
    n0, n1, n2, n3, n4, n5, n6, n7 = _load_words(q_ptr, rows, units, N, KU, rmask[:, None] & (units < u_end)[None, :], BITS, FULL)
    for u0 in range(u_beg, u_end, BU):
        w0, w1, w2, w3, w4, w5, w6, w7 = n0, n1, n2, n3, n4, n5, n6, n7
        units = tl.max_contiguous(tl.multiple_of(u0 + BU + tl.arange(0, BU), BU), BU)
        n0, n1, n2, n3, n4, n5, n6, n7 = _load_words(q_ptr, rows, units, N, KU, rmask[:, None] & (units < u_end)[None, :], BITS, FULL)
        xk = u0 * 32 + kk
        xt = tl.load(xrow + xk[None, :], mask=mmask[:, None] & (xk < u_end * 32)[None, :], other=0.0)  # prepped
        if F32_DOT:
            xt = xt.to(tl.float32)
        if KIND != 2:
            sx = _dot(xt, ones, F32_DOT)  # [BM, BN], every column = sum of the tile's activations
        g0 = tl.minimum((u0 * 32) // GS, G - 1)  # a tile never starts in the padding
        poff = rows * G + g0
        if KIND == 0:
            s = tl.load(p0_ptr + poff, mask=rmask, other=0.0).to(tl.float32)
            b = tl.load(p1_ptr + poff, mask=rmask, other=0.0).to(tl.float32)
            tile = _unit_tile(w0, w1, w2, w3, w4, w5, w6, w7, tab_ptr, rows[:, None], BITS, 0, 0, DT, USE_ASM)
            acc += _dot(xt, tile, F32_DOT) * s[None, :] + sx * b[None, :]
        elif KIND == 2:
            s = tl.load(p0_ptr + poff, mask=rmask, other=0.0).to(tl.float32)
            tb = tl.where(rmask, rows * TAB_SN + g0 * TAB_SG, 0)[:, None]  # in bounds for rows past N
            tile = _unit_tile(w0, w1, w2, w3, w4, w5, w6, w7, tab_ptr, tb, BITS, 1, 0, DT, USE_ASM)
            acc += _dot(xt, tile, F32_DOT) * s[None, :]
        else:
            off = tl.load(p0_ptr + poff, mask=rmask, other=0.0).to(tl.float32)
            for BIT in tl.static_range(BITS):
                al = tl.load(p1_ptr + poff * BITS + BIT, mask=rmask, other=0.0).to(tl.float32)
                off -= al
                tile = _unit_tile(w0, w1, w2, w3, w4, w5, w6, w7, tab_ptr, rows[:, None], BITS, 2, BIT, DT, USE_ASM)
                acc += _dot(xt, tile, F32_DOT) * (2.0 * al)[None, :]
            acc += sx * off[None, :]
    optr = out_ptr + pid_s * stride_os + ms.to(tl.int64)[:, None] * N + rows[None, :]
    tl.store(optr, acc.to(out_ptr.dtype.element_ty), mask=mmask[:, None] & rmask[None, :])


@triton.jit
def _gather_kernel(x_ptr, perm_ptr, xp_ptr, K, NB, stride_xm, W: tl.constexpr, TB: tl.constexpr):
    """Activations into a kernel's k order: x [M, K] -> xp [M, NB * W], column j of block b = x[b*W + perm[j]]
    (0 past K), so the kernel reads contiguous vectors instead of gathering. One program: TB blocks of one row."""
    m = tl.program_id(1)
    b = tl.program_id(0) * TB + tl.arange(0, TB)
    j = tl.arange(0, W)
    k = b[:, None] * W + tl.load(perm_ptr + j)[None, :]
    bm = (b < NB)[:, None]
    x = tl.load(x_ptr + m.to(tl.int64) * stride_xm + k, mask=bm & (k < K), other=0.0)
    tl.store(xp_ptr + m.to(tl.int64) * NB * W + b[:, None] * W + j[None, :], x, mask=bm)


@triton.jit
def _reduce_kernel(p_ptr, out_ptr, MN, S, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < MN
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    p = p_ptr + offs
    for _s in range(0, S):  # the pointer advances (64-bit): S x MN may pass 2^31
        acc += tl.load(p, mask=mask, other=0.0)
        p += MN
    tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


# ------------------------------------------------------------------------------------------------- host
def dot_perm(bits: int) -> list[int]:
    """Code index (inside a unit) of each of the 32 columns of a unit in ``_unit_tile``'s join order.

    Column s = a*16 + b*8 + c*4 + d*2 + e holds half a (0 = low code) of pair t = 8e + 4d + 2c + b.
    """
    pairs = lut_layout.pair_slots(bits)
    out = []
    for s in range(32):
        a, b, c, d, e = s >> 4, (s >> 3) & 1, (s >> 2) & 1, (s >> 1) & 1, s & 1
        t = 8 * e + 4 * d + 2 * c + b
        out.append(pairs[t][2 + a])
    return out


_TABLES: dict = {}


def device_table(name: str, bits: int, device, build, dtype) -> torch.Tensor:
    """``build(bits)`` (a list of numbers) as a tensor on ``device``, made once per (name, bits, device)."""
    key = (name, bits, str(device))
    t = _TABLES.get(key)
    if t is None:
        t = torch.tensor(build(bits), dtype=dtype, device=device)
        _TABLES[key] = t
    return t


@dataclass(frozen=True)
class Config:
    path: str  # "wgmma" (Hopper, lut_wgmma.py) | "fast" (affine GEMV, lut_gemv.py) | "gemv" | "dot"
    bm: int
    bn: int
    bu: int
    split: int = 1
    num_warps: int = 4
    num_stages: int = 2
    maxnreg: int = 0  # register cap per thread (0: the compiler's choice); wgmma path only


_TL_DT = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32}


def _sm_count(device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4


def _split_for(blocks: int, ku: int, bu: int, sms: int, waves: float = 4.0) -> int:
    tiles = max(1, -(-ku // bu))
    s = max(1, round(waves * sms / max(blocks, 1)))
    return max(1, min(s, tiles))


def candidates(m: int, n: int, k: int, w: LutWeight, device, wgmma: bool = True,
               dtype: Optional[torch.dtype] = None) -> list[Config]:  # fmt: skip
    """Launch configurations worth timing for this shape (the first is the default). Where the Hopper wgmma
    kernel applies, only its configurations (``MEMTOOL_LUT_ALL_PATHS=1``: all paths; ``wgmma=False``: the
    Triton paths only)."""
    ku = lut_layout.num_units(k)
    sms = _sm_count(device)
    out = []
    from memtool.kernels import lut_wgmma

    if wgmma and lut_wgmma.supports(w, m, n, k, device, dtype):
        # Hopper tensor cores fed from registers (lut_wgmma.py): the best at every M and shape measured on an
        # H200 and an H100 (docs/bench/lut_kernels.md), so the other paths are not timed. The split-K factor
        # matters most (a program count just under what fits on the GPU at once: 4-7 programs per SM, set by
        # the registers: 66-72 at M=1 with 3 slots, 96 at M=16 with the cap), so several are timed; ``num_stages``
        # is the raw kernel's slot count (tiles in flight + 1). Each entry: shape, and the "waves" (programs
        # per SM) that suit it.
        bm = min(64, max(8, 1 << (m - 1).bit_length()))
        if bm >= 32:  # folded scales (M=64 on an H200: 128 rows / 8 warps / split 4 best)
            shapes = (((128, 8, 3, 0), (4.0, 2.0, 6.0)), ((64, 4, 3, 0), (4.0, 2.0, 6.0)))
        elif bm >= 16:  # 4 slots, 4 programs per SM first (8192x28672, session 11, H200: 4-bit 39.0-39.3 -> 38.5
            # us, 3-bit 40.1-40.6 -> 39.3; H100: equal or 0.5 us faster); a 96-register cap: 5 programs per SM (H100,
            # 4-bit 8192x28672: 57.9 -> 57.0 us); 5 slots at that cap (H200, 3-bit: 43.6 -> 42.8 us)
            shapes = (((64, 4, 4, 0), (4.0,)), ((64, 4, 3, 96), (5.0, 4.0)), ((64, 4, 5, 96), (5.0,)),
                      ((64, 4, 4, 0), (6.0, 3.0)), ((64, 4, 3, 0), (4.0, 3.0)),
                      ((128, 8, 3, 0), (2.0, 3.0)))  # fmt: skip
        else:
            shapes = (((64, 4, 3, 0), (7.0, 6.0, 4.0, 3.0)), ((64, 4, 4, 0), (6.0, 4.0, 3.0)),
                      ((128, 8, 3, 0), (3.0, 2.0)))  # fmt: skip
        for (bn, nw, st, reg), waves in shapes:
            blocks = n // bn * -(-m // bm)
            for split in dict.fromkeys(_split_for(blocks, ku // 4, 1, sms, wv) for wv in waves):
                out.append(Config("wgmma", bm, bn, 4, split, nw, st, reg))
        if os.environ.get("MEMTOOL_LUT_ALL_PATHS", "0") != "1":
            return out
    if w.kind == "affine" and m <= 8:
        # fast GEMV (lut_gemv.py): tiles of BN rows x 4 units, pipelined loads; measured best on an H200 first
        for bn, nw, st, waves in ((256, 4, 3, 4.0), (256, 4, 3, 2.0), (256, 4, 3, 8.0), (256, 4, 2, 4.0),
                                  (256, 4, 2, 8.0), (128, 4, 3, 4.0)):  # fmt: skip
            blocks = -(-n // bn) * m
            out.append(Config("fast", 1, bn, 4, _split_for(blocks, ku, 4, sms, waves), nw, st))
    if m <= 16:
        # BU=16/32: 64-128 contiguous bytes per row and plane per iteration (longer DRAM bursts)
        for bn, bu, nw in ((128, 8, 4), (256, 8, 8), (256, 8, 4), (64, 8, 4), (64, 16, 4), (32, 32, 4)):
            blocks = -(-n // bn) * m
            for waves in (4.0, 8.0):
                out.append(Config("gemv", 1, bn, bu, _split_for(blocks, ku, bu, sms, waves), nw))
    bm = 16 if m <= 16 else (32 if m <= 32 else 64)
    for bn, nw, st in ((128, 4, 2), (64, 4, 2), (256, 8, 2)):
        blocks = -(-n // bn) * -(-m // bm)
        for waves in (2.0, 4.0):
            out.append(Config("dot", bm, bn, 4, _split_for(blocks, ku, 4, sms, waves), nw, st))
    seen, uniq = set(), []
    for c in out:
        if c not in seen:
            seen.add(c)
            uniq.append(c)
    return uniq


_TUNED: dict = {}


def launch(x2: torch.Tensor, w: LutWeight, cfg: Config, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Run one configuration: x2 [M, K] contiguous rows -> [M, N] in x2.dtype."""
    if cfg.path == "fast":
        from memtool.kernels.lut_gemv import launch_affine

        return launch_affine(x2, w, cfg.bn, cfg.bu, cfg.split, cfg.num_warps, cfg.num_stages, out=out)
    if cfg.path == "wgmma":
        from memtool.kernels import lut_wgmma

        return lut_wgmma.launch(x2, w, cfg.bm, cfg.bn, cfg.split, cfg.num_warps, cfg.num_stages, out=out,
                                maxnreg=cfg.maxnreg)  # fmt: skip
    m, k = x2.shape
    n = w.out_features
    ku = lut_layout.num_units(k)
    dev = x2.device
    interp = _interpreting() or dev.type != "cuda"
    kind = KIND_ID[w.kind]
    if w.kind == "affine":
        p0, p1, tab, tsn, tsg = w.scales, w.biases, w.qweight, 0, 0
    elif w.kind == "bcq":
        p0, p1, tab, tsn, tsg = w.offsets, w.alphas, w.qweight, 0, 0
    else:
        p0, p1, tab = w.scales, w.scales, w.table
        e = 1 << w.bits
        tsn, tsg = (0, 0) if w.table.dim() == 1 else (w.groups * e, e)
    bu = cfg.bu
    if cfg.path == "dot" and w.groups > 1:
        bu = max(1, min(bu, w.group_size // 32))  # a dot tile must lie in one group
    tiles = -(-ku // bu)
    split = max(1, min(cfg.split, tiles))
    ups = -(-tiles // split) * bu
    split = -(-ku // ups)
    if out is None:
        out = torch.empty(m, n, dtype=x2.dtype, device=dev)
    dst = out if split == 1 else torch.empty(split, m, n, dtype=torch.float32, device=dev)
    grid = (triton.cdiv(n, cfg.bn), split, triton.cdiv(m, cfg.bm))
    common = dict(M=m, N=n, K=k, KU=ku, G=w.groups, GS=w.group_size, UPS=ups, stride_xm=x2.stride(0),
                  stride_os=m * n, TAB_SN=tsn, TAB_SG=tsg, BITS=w.bits, KIND=kind, BM=cfg.bm, BN=cfg.bn,
                  BU=bu, USE_ASM=not interp, FULL=n % 64 == 0 and ku % 4 == 0, num_warps=cfg.num_warps)  # fmt: skip
    if cfg.path == "gemv":
        common["BM"] = 1
        grid = (triton.cdiv(n, cfg.bn), split, m)
        even = ku % bu == 0 and ups % bu == 0
        xp = x2
        if k % 2 or x2.stride(0) % 2 or x2.data_ptr() % 4:  # pairs of activations are read as int32 words
            xp = torch.zeros(m, k + 1, dtype=x2.dtype, device=dev)
            xp[:, :k] = x2
        xw = xp.view(torch.int32)
        common["stride_xm"] = xw.stride(0)
        _gemv_kernel[grid](xw, w.qweight, p0, p1, tab, dst, **common, EVEN=even,
                           XBF16=x2.dtype == torch.bfloat16, XFULL=even and k == 32 * ku)  # fmt: skip
    else:
        dt = _TL_DT[x2.dtype]
        f32 = interp or x2.dtype == torch.float32
        xd = torch.empty(m, ku * 32, dtype=x2.dtype, device=dev)
        pb = 32
        perm = device_table("dot_perm", w.bits, dev, dot_perm, torch.int32)
        _gather_kernel[(triton.cdiv(ku, pb), m)](x2, perm, xd, k, ku, x2.stride(0), W=32, TB=pb)
        common["stride_xm"] = 32 * ku
        _dot_kernel[grid](
            xd, w.qweight, p0, p1, tab, tab, dst, **common,
            DT=tl.float32 if f32 else dt, F32_DOT=f32, num_stages=cfg.num_stages,
        )  # fmt: skip
    if split > 1:
        mn = m * n
        block = 1024
        _reduce_kernel[(triton.cdiv(mn, block),)](dst, out, mn, split, BLOCK=block)
    return out


def _time(fns, trials: int = 3, calls: int = 12) -> float:
    """GPU time of one call, us: the callables ``fns`` in turn, ``calls`` calls or more (whole rotations) captured
    in a CUDA graph (as in a served model: CUDA graphs / torch.compile), replayed ``trials`` times (median)."""
    reps = -(-calls // len(fns))
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for f in fns:
            f()  # compiles; allocations before capture
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(reps):
            for f in fns:
                f()
    g.replay()
    torch.cuda.synchronize()
    ts = []
    for _ in range(trials):
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b) * 1000.0 / (reps * len(fns)))
    del g
    return sorted(ts)[len(ts) // 2]


def _copies(nbytes: int, l2: int, free: int, most: int = 64) -> int:
    """How many weights of ``nbytes`` to rotate: together more than twice ``l2``, the extra ones within a quarter
    of ``free`` bytes, at most ``most``, at least 1."""
    nb = max(1, nbytes)
    return max(1, min(2 * l2 // nb + 1, int(0.25 * free // nb) + 1, most))


def _rotation(w: LutWeight) -> list[LutWeight]:
    """``w`` and copies of it (fresh tensors, no caches) that together exceed twice the L2, within a quarter of
    the free memory: timed in turn, each call reads its weight from DRAM, as the layers of a model do. The tuner
    used to time one weight over and over, and what stayed in L2 (a good part of a 117 MB weight on an H200's
    60 MB) made slower configurations look faster (H200, 4-bit 8192x28672 M=16: split 4 picked at 43.0 us over
    split 5 at 38.6 in the rotated benchmark). Without room for a copy: ``[w]``."""
    dev = w.qweight.device
    l2 = getattr(torch.cuda.get_device_properties(dev), "L2_cache_size", 0) or (50 << 20)
    return [w] + [w.clone() for _ in range(_copies(w.nbytes(), l2, torch.cuda.mem_get_info(dev)[0]) - 1)]


def _pick(x2: torch.Tensor, w: LutWeight, cands: list[Config]) -> Optional[Config]:
    """The fastest of ``cands`` (GPU time), or where tuning is off the first that runs; None if none runs."""
    if _interpreting() or x2.device.type != "cuda" or os.environ.get("MEMTOOL_LUT_TUNE", "1") == "0":
        for c in cands:
            try:
                launch(x2, w, c)
            except Exception:  # noqa: BLE001  (a Triton version may reject a block shape)
                continue
            return c
        return None
    times = []
    rot = _rotation(w)
    for c in cands:
        try:
            times.append((_time([lambda W=W: launch(x2, W, c) for W in rot]), c))
        except Exception:  # noqa: BLE001  (a config that does not compile / fit is skipped)
            continue
    del rot
    return _earliest_within(times)


def _earliest_within(times: list, tol: float = 0.02):
    """The earliest of ``(time, config)`` pairs within ``tol`` of the fastest (None if empty): candidates come in
    the order measured best in the benchmarks, and the tuner's own timing (3 short samples) is that noisy."""
    if not times:
        return None
    fastest = min(t for t, _ in times)
    return next(c for t, c in times if t <= fastest * (1 + tol))


def choose(x2: torch.Tensor, w: LutWeight) -> Config:
    m, k = x2.shape
    n = w.out_features
    key = (m, n, k, w.kind, w.bits, w.group_size, x2.dtype, str(x2.device))
    cfg = _TUNED.get(key)
    if cfg is not None:
        return cfg
    cands = candidates(m, n, k, w, x2.device, dtype=x2.dtype)
    if x2.device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return cands[0]  # no timing inside someone's graph capture; tuned at the first call outside one
    cfg = _pick(x2, w, cands)
    if cfg is None and cands and cands[0].path == "wgmma":  # Gluon could not build it here: the Triton paths
        cfg = _pick(x2, w, candidates(m, n, k, w, x2.device, wgmma=False))
    cfg = cfg or cands[0]
    _TUNED[key] = cfg
    return cfg


def lut_matmul_triton(x: torch.Tensor, w: LutWeight, config: Optional[Config] = None) -> torch.Tensor:
    """y = x @ W^T through the Triton kernels (``config`` forces a launch configuration)."""
    k = w.in_features
    lead = x.shape[:-1]
    x2 = x.reshape(-1, k)
    if x2.stride(-1) != 1 or (x2.shape[0] > 1 and x2.stride(0) != k):
        x2 = x2.contiguous()
    if x2.shape[0] == 0:
        return torch.empty(*lead, w.out_features, dtype=x.dtype, device=x.device)
    cfg = config or choose(x2, w)
    return launch(x2, w, cfg).reshape(*lead, w.out_features)
