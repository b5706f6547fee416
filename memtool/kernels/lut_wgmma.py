"""Hopper tensor-core kernel for affine LUT weights: decoded codes go from registers straight into ``wgmma``.

Why another kernel
------------------
The Triton ``tl.dot`` path (:mod:`memtool.kernels.lut_triton`) decodes a tile in a blocked layout and Triton
moves it through shared memory into the MMA operand layout: ~16 instructions per weight and 0.5-0.9x
cuBLAS fp16 at M=16-64. This kernel is written in Gluon (Triton's layout-explicit dialect, Hopper only) so
the layout is ours to choose: every thread loads exactly the words whose codes it owns in the register
fragment of ``wgmma``'s A operand, decodes them in place and hands the registers to the tensor cores.

    y^T[n, m] = sum_k W[n, k] x[m, k]:   A = decoded codes [64 rows, 128 k] (registers),
                                         B = activations [128 k, BM] (shared memory)

The layout trick (all offline, no repacking of the stored words): in the A fragment of ``wgmma`` (k_width
2) lane ``l`` of a warp holds rows ``l/4`` and ``l/4 + 8`` and, of every 8 consecutive k, the pair
``2*(l%4), 2*(l%4)+1``. A tile of 4 units (128 k) is a word block of 64 rows x 4 units per plane in the
tile layout, so let lane ``l`` load unit ``l%4`` of rows ``l/4`` and ``l/4+8``: it owns all 32 codes of
those two (row, unit)s. The k order inside a tile is free (the activations are permuted to match by the
prep kernel), so the decoded pairs are joined and permuted until their linear layout IS the fragment
layout: ``gl.convert_layout(..., assert_trivial=True)`` proves no data moves.

Decode (``pair_plan``): one ``lop3`` puts a pair of codes (the two 16-bit halves of a word) into the
mantissas of two fp16 (``0x6400 | c << f`` = 1024 + c*2^f) or bf16 (``0x4300``) numbers and one packed FMA
``v * 2^-f - 1024 * 2^-f`` makes them the exact codes; fields are left where they are in the word when they
fit the mantissa, so one shift serves several pairs (~1.1-1.3 instructions per weight). Each tile lies in
one group (group size 128 * 2^i, or per-channel): ``y += s * (codes . x) + b * sum(x)`` per tile, with
``sum(x)`` per tile from the prep kernel; at M >= 32 the scale is folded into the decode instead
(``fma(code, s, b)`` in fp16/bf16) and wgmma accumulates over all of K.

Latency: the words are loaded two tiles ahead into registers, the activation tiles stream through a cp.async
ring in shared memory, and at M <= 8 two tiles go per iteration so one is decoded while the other's (async)
wgmma runs. Measured (docs/bench/lut_kernels.md): 2.5x / 2.0x / 1.45x cuBLAS fp16 at M = 1 / 16 / 64 on an
H200 (3-bit, 8192x28672), 3.3x / 2.7x / 2.0x on an H100.

Only on a CUDA device of compute capability 9.x with a Triton that has Gluon; the dispatcher
(:mod:`memtool.kernels.lut_triton`) offers it as path ``"wgmma"`` when :func:`supports` says yes. The
plan and the k permutation are checked on the CPU by emulating the decode with torch
(``tests/kernels/test_lut_wgmma.py``); the kernel itself on the GPU against float64 by
``scripts/gpu_wgmma_sweep.py`` (every variant: bits, dtypes, group sizes, ragged M, split-K).
"""

from __future__ import annotations

import functools
from typing import Optional

import torch
import triton

from memtool.kernels import lut_layout
from memtool.kernels.lut_triton import _gather_kernel, _reduce_kernel, device_table

try:  # Gluon (Triton >= 3.5); the kernel below is only defined where it exists
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.ampere.async_copy import (
        async_copy_global_to_shared,
        commit_group,
        wait_group,
    )
    from triton.experimental.gluon.language.nvidia.hopper import (
        fence_async_shared,
        warpgroup_mma,
        warpgroup_mma_wait,
    )

    HAVE_GLUON = True
except Exception:  # noqa: BLE001  (an older Triton, or one whose Gluon API moved)
    HAVE_GLUON = False

BITS_OK = (2, 3, 4)
TILE_K = lut_layout.UNIT * lut_layout.UNIT_TILE  # 128 k per tile
MANTISSA = {torch.float16: 10, torch.bfloat16: 7}
MAGIC = {torch.float16: 1024.0, torch.bfloat16: 128.0}


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


def emulate_tile(words: torch.Tensor, bits: int, dtype: torch.dtype) -> torch.Tensor:
    """What the kernel's decode computes for one tile, in torch: ``words`` int64 ``[R, bits, 4]`` (plane
    words of R rows x 4 units) -> codes ``[R, 128]`` in k' order (float64). Used by tests to check
    :func:`pair_plan` and :func:`tile_perm` against :func:`lut_layout.unpack_codes`."""
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
        pairs.append(torch.stack([lo * sc - magic * sc, hi * sc - magic * sc], -1))  # [R, 4, 2]
    j = torch.stack(pairs, -1)  # [R, 4(u), 2(h), 16(T)]
    j = j.reshape(*j.shape[:3], 2, 2, 2, 2)  # T bits: last axis fastest -> [.., b3, b2, b1, b0]
    r = j.shape[0]
    j = j.reshape(r, 2, 2, 2, 2, 2, 2, 2)  # [R, u1, u0, h, b3, b2, b1, b0]
    j = j.permute(0, 4, 7, 6, 5, 1, 2, 3)  # -> [R, b3, b0, b1, b2, u1, u0, h]
    return j.reshape(r, TILE_K)


def supports(w, m: int, n: int, k: int, device, dtype: Optional[torch.dtype] = None) -> bool:
    """True where this kernel can run: affine 2/3/4-bit weights whose tiles lie in one group (group size
    128 * 2^i or per-channel), whole tiles (N % 64 == 0, K % 128 == 0), fp16/bf16 activations (``dtype``,
    when given), on a Hopper GPU with Gluon."""
    if not HAVE_GLUON or device.type != "cuda" or w.kind != "affine" or w.bits not in BITS_OK:
        return False
    if dtype is not None and dtype not in MANTISSA:
        return False
    if torch.cuda.get_device_capability(device)[0] != 9:
        return False
    if n % lut_layout.ROW_BLOCK or k % TILE_K:
        return False
    tpg = w.group_size // TILE_K
    return w.groups == 1 or (w.group_size % TILE_K == 0 and tpg & (tpg - 1) == 0)


# ------------------------------------------------------------------------------------------------ prep
def prep_activations(x2: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x2 [M, K] -> (xp [M, NT*128] in the kernel's k' order (:func:`tile_perm`), xs [M, NT] fp32 tile sums)."""
    m, k = x2.shape
    nt = -(-k // TILE_K)
    xp = torch.empty(m, nt * TILE_K, dtype=x2.dtype, device=x2.device)
    xs = torch.empty(m, nt, dtype=torch.float32, device=x2.device)
    perm = device_table("wgmma_perm", bits, x2.device, tile_perm, torch.int32)
    tb = 4
    _gather_kernel[(triton.cdiv(nt, tb), m)](x2, perm, xp, xs, k, nt, x2.stride(0), W=TILE_K, TB=tb, SUMS=True)
    return xp, xs


# ---------------------------------------------------------------------------------------------- kernel
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


if HAVE_GLUON:
    _fma_asm = triton.constexpr_function(_fma_asm_text)

    @gluon.jit
    def _wsel(w0, w1, w2, w3, P: gl.constexpr):
        if P == 0:
            r = w0
        elif P == 1:
            r = w1
        elif P == 2:
            r = w2
        else:
            r = w3
        return r

    @gluon.jit
    def _pair(w0, w1, w2, w3, magic, s2, b2, T: gl.constexpr, PLAN: gl.constexpr, BITS: gl.constexpr,
              BF16: gl.constexpr, FOLD: gl.constexpr):  # fmt: skip
        """Pair T of every (row, unit) of the thread's words -> [R, 4, 2] exact codes (fp16 / bf16), or with
        FOLD the weights ``code * s + b`` (s2, b2: the row's scale and bias, twice in an int32)."""
        WORD: gl.constexpr = PLAN[T][0]
        SB: gl.constexpr = PLAN[T][1]
        F: gl.constexpr = PLAN[T][2]
        if WORD < 0:  # 3-bit codes 30/31: bit i of each is bit 15 / 31 of word i
            v = ((w0 >> 15) & 0x10001) | ((w1 >> 14) & 0x20002) | ((w2 >> 13) & 0x40004) | magic
        else:
            w = _wsel(w0, w1, w2, w3, WORD)
            if SB > 0:
                w = w >> SB
            v = (w & (((1 << BITS) - 1) << F) * 0x10001) | magic
        if FOLD:
            lo, hi = gl.inline_asm_elementwise(_fma_asm(F, BF16, True), "=h,=h,r,r,r", [v, s2, b2],
                                               dtype=(gl.int16, gl.int16), is_pure=True, pack=1)  # fmt: skip
        else:
            lo, hi = gl.inline_asm_elementwise(_fma_asm(F, BF16, False), "=h,=h,r", [v], dtype=(gl.int16, gl.int16),
                                               is_pure=True, pack=1)  # fmt: skip
        DT: gl.constexpr = gl.bfloat16 if BF16 else gl.float16
        return gl.join(lo.to(DT, bitcast=True), hi.to(DT, bitcast=True))

    @gluon.jit
    def _a_tile(w0, w1, w2, w3, magic, s2, b2, A: gl.constexpr, BN: gl.constexpr, PLAN: gl.constexpr,
                BITS: gl.constexpr, BF16: gl.constexpr, FOLD: gl.constexpr):  # fmt: skip
        """The [BN, 128] A operand of one tile, already in the wgmma fragment layout (see tile_perm)."""
        p0 = _pair(w0, w1, w2, w3, magic, s2, b2, 0, PLAN, BITS, BF16, FOLD)
        p1 = _pair(w0, w1, w2, w3, magic, s2, b2, 1, PLAN, BITS, BF16, FOLD)
        p2 = _pair(w0, w1, w2, w3, magic, s2, b2, 2, PLAN, BITS, BF16, FOLD)
        p3 = _pair(w0, w1, w2, w3, magic, s2, b2, 3, PLAN, BITS, BF16, FOLD)
        p4 = _pair(w0, w1, w2, w3, magic, s2, b2, 4, PLAN, BITS, BF16, FOLD)
        p5 = _pair(w0, w1, w2, w3, magic, s2, b2, 5, PLAN, BITS, BF16, FOLD)
        p6 = _pair(w0, w1, w2, w3, magic, s2, b2, 6, PLAN, BITS, BF16, FOLD)
        p7 = _pair(w0, w1, w2, w3, magic, s2, b2, 7, PLAN, BITS, BF16, FOLD)
        p8 = _pair(w0, w1, w2, w3, magic, s2, b2, 8, PLAN, BITS, BF16, FOLD)
        p9 = _pair(w0, w1, w2, w3, magic, s2, b2, 9, PLAN, BITS, BF16, FOLD)
        p10 = _pair(w0, w1, w2, w3, magic, s2, b2, 10, PLAN, BITS, BF16, FOLD)
        p11 = _pair(w0, w1, w2, w3, magic, s2, b2, 11, PLAN, BITS, BF16, FOLD)
        p12 = _pair(w0, w1, w2, w3, magic, s2, b2, 12, PLAN, BITS, BF16, FOLD)
        p13 = _pair(w0, w1, w2, w3, magic, s2, b2, 13, PLAN, BITS, BF16, FOLD)
        p14 = _pair(w0, w1, w2, w3, magic, s2, b2, 14, PLAN, BITS, BF16, FOLD)
        p15 = _pair(w0, w1, w2, w3, magic, s2, b2, 15, PLAN, BITS, BF16, FOLD)
        q0 = gl.join(gl.join(gl.join(p0, p1), gl.join(p2, p3)), gl.join(gl.join(p4, p5), gl.join(p6, p7)))
        q1 = gl.join(gl.join(gl.join(p8, p9), gl.join(p10, p11)), gl.join(gl.join(p12, p13), gl.join(p14, p15)))
        j = gl.join(q0, q1)  # [BN, 4(u), 2(h), 2(b0), 2(b1), 2(b2), 2(b3)]
        j = gl.reshape(j, [BN, 2, 2, 2, 2, 2, 2, 2])  # [BN, u1, u0, h, b0, b1, b2, b3]
        j = gl.permute(j, [0, 7, 4, 5, 6, 1, 2, 3])  # k' = 64 b3 + 32 b0 + 16 b1 + 8 b2 + 4 u1 + 2 u0 + h
        return gl.convert_layout(gl.reshape(j, [BN, 128]), A, assert_trivial=True)

    @gluon.jit
    def _words(q_ptr, woff, t, BITS: gl.constexpr):
        """Tile t's words (BITS planes of the thread's [BN, 4] (row, unit)s) into registers."""
        tb = q_ptr + t * (BITS * 256)
        w0 = gl.load(tb + woff)
        w1 = gl.load(tb + 256 + woff)
        w2 = w0
        w3 = w0
        if BITS > 2:
            w2 = gl.load(tb + 512 + woff)
        if BITS > 3:
            w3 = gl.load(tb + 768 + woff)
        return w0, w1, w2, w3

    @gluon.jit
    def _params(s_ptr, b_ptr, xs_ptr, rows, ms, mmask, G, NT, t, GSH, valid):
        """Group scale and bias of tile t's rows (fp32, zero for a tile past the range) and its x sums."""
        g = t >> GSH
        sc = gl.load(s_ptr + rows * G + g).to(gl.float32)
        bi = gl.load(b_ptr + rows * G + g).to(gl.float32)
        sc = gl.where(valid, sc, 0.0)
        bi = gl.where(valid, bi, 0.0)
        xsum = gl.load(xs_ptr + ms * NT + t, mask=mmask, other=0.0)
        return sc, bi, xsum

    @gluon.jit
    def _packed_params(s_ptr, b_ptr, r, row0, G, g, BF16: gl.constexpr):
        """FOLD: the group's scale and bias of the thread's rows, each as two fp16/bf16 copies in an int32,
        broadcast over the [BN, 4] word layout of r's parent."""
        sv = gl.load(s_ptr + (row0 + r) * G + g)
        bv = gl.load(b_ptr + (row0 + r) * G + g)
        if BF16:
            sv = sv.to(gl.float32).to(gl.bfloat16)
            bv = bv.to(gl.float32).to(gl.bfloat16)
        si = sv.to(gl.int16, bitcast=True).to(gl.int32) & 0xFFFF
        bi = bv.to(gl.int16, bitcast=True).to(gl.int32) & 0xFFFF
        return (si | (si << 16))[:, None], (bi | (bi << 16))[:, None]

    @gluon.jit
    def _wgmma_kernel(xp_ptr, xs_ptr, q_ptr, s_ptr, b_ptr, out_ptr, M, N, KU, NT, G, GSH, TPS, magic,
                      BITS: gl.constexpr, BN: gl.constexpr, BM: gl.constexpr, PLAN: gl.constexpr,
                      BF16: gl.constexpr, NW: gl.constexpr, RB: gl.constexpr, STAGES: gl.constexpr,
                      PAIR: gl.constexpr, FOLD: gl.constexpr):  # fmt: skip
        """Program (BN rows, K-range of TPS tiles, BM activation rows): y^T = W x^T on the tensor cores;
        A = decoded codes in registers, B = the prepped activation tile in shared memory.

        The words are loaded two tiles ahead into registers; the activations stream through a
        STAGES-deep cp.async ring of tiles. PAIR (small BM): two tiles per iteration, the second decoded
        while the first one's wgmma runs and the first one scaled while the second one's runs (measured:
        M=1 52.7 -> 47.2 us; at BM >= 16 the extra registers cost more than the overlap gains). The warps
        split the rows in 16s (WB); the rest of the row bits are registers (RB). Tile t is in group
        t >> GSH; a tile past the range (odd count with PAIR) is decoded but scaled by zero. FOLD (BM >= 32, not
        with PAIR): the decode makes the weights ``code * s + b`` and wgmma accumulates over all of K, so
        there is no per-tile scaling (M=64: 120 -> 88 us)."""
        pid_n = gl.program_id(0)
        pid_s = gl.program_id(1)
        pid_m = gl.program_id(2)
        WB: gl.constexpr = [[16, 0], [32, 0]] if NW == 4 else [[16, 0], [32, 0], [64, 0]]
        LW: gl.constexpr = gl.DistributedLinearLayout(
            reg_bases=RB, lane_bases=[[0, 1], [0, 2], [1, 0], [2, 0], [4, 0]], warp_bases=WB, block_bases=[],
            shape=[BN, 4])  # fmt: skip
        MMA: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[NW, 1], instr_shape=[16, BM, 16])
        A: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=MMA, k_width=2)
        XL: gl.constexpr = gl.BlockedLayout([1, 8], [2, 16], [NW, 1], [1, 0])
        XSL: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)
        xsm = gl.allocate_shared_memory(xp_ptr.dtype.element_ty, [STAGES, BM, 128], XSL)  # ring of tiles
        # word offsets of the thread's (row, unit)s inside one tile (tile layout: 64-row blocks, 4 units)
        r = gl.arange(0, BN, layout=gl.SliceLayout(1, LW))
        u = gl.arange(0, 4, layout=gl.SliceLayout(0, LW))
        woff = ((r // 64) * (64 * BITS) * KU + (r % 64) * 4)[:, None] + u[None, :]
        qb = q_ptr + (pid_n * BN).to(gl.int64) * (BITS * KU)
        rows = pid_n * BN + gl.arange(0, BN, layout=gl.SliceLayout(1, MMA))
        ms = pid_m * BM + gl.arange(0, BM, layout=gl.SliceLayout(0, MMA))
        mmask = ms < M
        xm = pid_m * BM + gl.arange(0, BM, layout=gl.SliceLayout(1, XL))
        xk = gl.arange(0, 128, layout=gl.SliceLayout(0, XL))
        xrow = xp_ptr + xm.to(gl.int64)[:, None] * (NT * 128) + xk[None, :]
        xmask = (xm < M)[:, None] & (xk < 128)[None, :]
        acc = gl.zeros([BN, BM], gl.float32, MMA)
        zero = gl.zeros([BN, BM], gl.float32, MMA)
        t_beg = pid_s * TPS
        t_end = gl.minimum(t_beg + TPS, NT)
        tl_ = t_end - 1
        # prologue (tiles past the range re-read the last one). The ring holds the tiles being multiplied
        # (1, or 2 with PAIR: their wgmma may still run while the next copies are issued) and those in flight.
        PRO: gl.constexpr = STAGES - 2 if PAIR else STAGES - 1
        for j in gl.static_range(PRO):
            async_copy_global_to_shared(xsm.index(j), xrow + gl.minimum(t_beg + j, tl_) * 128, mask=xmask)
            commit_group()
        n0, n1, n2, n3 = _words(qb, woff, t_beg, BITS)
        m0, m1, m2, m3 = _words(qb, woff, gl.minimum(t_beg + 1, tl_), BITS)
        if PAIR:
            for t in range(t_beg, t_end, 2):
                i = t - t_beg
                w0, w1, w2, w3 = n0, n1, n2, n3
                v0, v1, v2, v3 = m0, m1, m2, m3
                n0, n1, n2, n3 = _words(qb, woff, gl.minimum(t + 2, tl_), BITS)
                m0, m1, m2, m3 = _words(qb, woff, gl.minimum(t + 3, tl_), BITS)
                sc0, bi0, xs0 = _params(s_ptr, b_ptr, xs_ptr, rows, ms, mmask, G, NT, t, GSH, True)
                sc1, bi1, xs1 = _params(s_ptr, b_ptr, xs_ptr, rows, ms, mmask, G, NT, gl.minimum(t + 1, tl_), GSH,
                                        t + 1 < t_end)  # fmt: skip
                a0 = _a_tile(w0, w1, w2, w3, magic, magic, magic, A, BN, PLAN, BITS, BF16, False)
                wait_group(STAGES - 4)  # this thread's copies of the two tiles' activations have landed
                fence_async_shared()
                gl.thread_barrier()  # everyone's have, and every warp is done with the previous two
                d0 = warpgroup_mma(a0, xsm.index(i % STAGES).permute((1, 0)), zero, use_acc=False, is_async=True)
                a1 = _a_tile(v0, v1, v2, v3, magic, magic, magic, A, BN, PLAN, BITS, BF16, False)
                d1 = warpgroup_mma(a1, xsm.index((i + 1) % STAGES).permute((1, 0)), zero, use_acc=False,
                                   is_async=True)  # fmt: skip
                for j in gl.static_range(2):
                    tn = gl.minimum(t + STAGES - 2 + j, tl_)
                    async_copy_global_to_shared(xsm.index((i + STAGES - 2 + j) % STAGES), xrow + tn * 128, mask=xmask)
                    commit_group()
                d0 = warpgroup_mma_wait(1, deps=[d0])
                acc = acc + d0 * sc0[:, None] + bi0[:, None] * xs0[None, :]
                d1 = warpgroup_mma_wait(0, deps=[d1])
                acc = acc + d1 * sc1[:, None] + bi1[:, None] * xs1[None, :]
        else:
            for t in range(t_beg, t_end):
                i = t - t_beg
                w0, w1, w2, w3 = n0, n1, n2, n3
                n0, n1, n2, n3 = m0, m1, m2, m3
                m0, m1, m2, m3 = _words(qb, woff, gl.minimum(t + 2, tl_), BITS)
                if FOLD:
                    s2, b2 = _packed_params(s_ptr, b_ptr, r, pid_n * BN, G, t >> GSH, BF16)
                    a = _a_tile(w0, w1, w2, w3, magic, s2, b2, A, BN, PLAN, BITS, BF16, True)
                else:
                    sc, bi, xsum = _params(s_ptr, b_ptr, xs_ptr, rows, ms, mmask, G, NT, t, GSH, True)
                    a = _a_tile(w0, w1, w2, w3, magic, magic, magic, A, BN, PLAN, BITS, BF16, False)
                wait_group(STAGES - 2)  # this thread's copy of tile t's activations has landed
                fence_async_shared()
                gl.thread_barrier()  # everyone's has, and every warp is done with tile t-1's stage
                tn = gl.minimum(t + STAGES - 1, tl_)
                async_copy_global_to_shared(xsm.index((i + STAGES - 1) % STAGES), xrow + tn * 128, mask=xmask)
                commit_group()
                if FOLD:
                    acc = warpgroup_mma(a, xsm.index(i % STAGES).permute((1, 0)), acc)
                else:
                    d = warpgroup_mma(a, xsm.index(i % STAGES).permute((1, 0)), zero, use_acc=False)
                    acc = acc + d * sc[:, None] + bi[:, None] * xsum[None, :]
        wait_group(0)
        optr = out_ptr + pid_s * M * N + ms[None, :] * N + rows[:, None]
        gl.store(optr, acc.to(out_ptr.dtype.element_ty), mask=mmask[None, :])


def row_bases(bn: int, num_warps: int) -> tuple[tuple[int, int], ...]:
    """Register bases of the word layout: row + 8, then the row blocks above what the warps cover."""
    out = [(8, 0)]
    r = 16 * num_warps
    while r < bn:
        out.append((r, 0))
        r *= 2
    return tuple(out)


def launch(x2: torch.Tensor, w, bm: int, bn: int, split: int, num_warps: int = 4, stages: int = 3,
           pair: Optional[bool] = None, fold: Optional[bool] = None, maxnreg: int = 0,
           out: Optional[torch.Tensor] = None) -> torch.Tensor:  # fmt: skip
    """y = x2 @ W^T through the wgmma kernel (the caller checked :func:`supports`). ``stages``: tiles of
    activations in flight; ``pair`` (default: bm <= 8): two tiles per iteration; ``fold`` (default:
    bm >= 32, not with pair): the decode makes the weights ``code * s + b`` in fp16/bf16 (one rounding a
    weight, like a dequantized model) and wgmma accumulates over all of K, instead of exact codes scaled in
    fp32 per tile (measured on an H200 at M=64: 120 -> 88 us; max relative error 3.2e-4 vs 2.1e-4);
    ``maxnreg``: register cap per thread (0: ptxas decides; 128 at bm 16, 4 programs per SM)."""
    m, k = x2.shape
    n = w.out_features
    ku = lut_layout.num_units(k)
    nt = ku // lut_layout.UNIT_TILE
    split = max(1, min(split, nt))
    tps = -(-nt // split)
    split = -(-nt // tps)
    if n % bn:
        bn, num_warps = lut_layout.ROW_BLOCK, 4
    if not 16 * num_warps <= bn <= 32 * num_warps or num_warps not in (4, 8):
        raise ValueError(f"wgmma: {num_warps} warps cannot cover {bn} rows (16-32 rows a warp)")
    if out is None:
        out = torch.empty(m, n, dtype=x2.dtype, device=x2.device)
    dst = out if split == 1 else torch.empty(split, m, n, dtype=torch.float32, device=x2.device)
    xp, xs = prep_activations(x2, w.bits)
    bf16 = x2.dtype == torch.bfloat16
    if pair is None:
        pair = bm <= 8
    if fold is None:
        fold = bm >= 32
    gsh = 31 if w.groups == 1 else (w.group_size // TILE_K).bit_length() - 1
    grid = (n // bn, split, triton.cdiv(m, bm))
    _wgmma_kernel[grid](
        xp, xs, w.qweight, w.scales, w.biases, dst, m, n, ku, nt, w.groups, gsh, tps,
        0x43004300 if bf16 else 0x64006400,
        BITS=w.bits, BN=bn, BM=bm, PLAN=pair_plan(w.bits, MANTISSA[x2.dtype]), BF16=bf16, NW=num_warps,
        RB=row_bases(bn, num_warps), STAGES=max(4 if pair else 2, stages + 2 if pair else stages), PAIR=pair,
        FOLD=fold and not pair,
        num_warps=num_warps, **({"maxnreg": maxnreg} if maxnreg else {}),
    )  # fmt: skip
    if split > 1:
        block = 1024
        _reduce_kernel[(triton.cdiv(m * n, block),)](dst, out, m * n, split, BLOCK=block)
    return out
