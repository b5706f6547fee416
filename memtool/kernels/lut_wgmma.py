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

Raw decode (``pair_plan``, ``tile_shift`` in :mod:`memtool.kernels.lut_wgmma_plan`, with the prep kernel and the
torch emulation the tests use): one ``lop3`` puts a pair of codes (the two 16-bit halves of a
word) into the mantissas of two fp16 (``0x6400 | c << f`` = 1024 + c*2^f) or bf16 (``0x4300``) numbers, and
those go to the tensor cores as they are: the prep kernel scales activation k' by ``2^-f`` (exact, a power of
two), so ``wgmma`` computes ``magic * sum(x') + codes . x`` and the epilogue subtracts the first term
(``magic * sum(x')`` per tile from the prep). Fields stay where they are in the word when they fit the
mantissa, so one shift serves several pairs (~0.6 instructions per weight). Each tile lies in one group
(group size 128 * 2^i, or per-channel): ``y += s * (D - magic * sum(x')) + b * sum(x)`` per tile in fp32.
At M >= 32 the scale is folded into the decode instead (two packed FMAs per pair: ``code * s + b`` in
fp16/bf16) and wgmma accumulates over all of K.

Memory: each tile's words (BITS x 1 KiB), activations, group parameters and activation sums stream into
shared memory by cp.async, two or more tiles ahead, in a ring of separately allocated slots over which the
loop is unrolled (Triton's barrier analysis cannot tell the stages of one allocation apart and would add
barriers). The group scales and biases come from a tile-major copy (:func:`tile_params`, 256 contiguous
bytes per tile), the activations and their sums tile-major by row blocks from the prep, both padded with zero
tiles: every source moves a constant stride a tile, nothing is clamped, and the copies of an iteration's slots
are immediate offsets from one address. The kernel is launched with programmatic dependent launch and
requests its first words while the prep still runs; the prep is launched that way too, and each program of the
kernel lets the next call's prep launch once its loop is done. Split-K partials are added by the last program of
each row block. Measured (docs/bench/lut_kernels.md, 8192x28672, session 11, CUDA graphs of 32 calls): H100 3-bit
4.3x / 3.9x cuBLAS fp16 at M = 1 / 16, 4-bit 3.5x / 3.2x; H200 3-bit 3.6x / 3.0x, 4-bit 3.3x / 3.0x.

Only on a CUDA device of compute capability 9.x with a Triton that has Gluon; the dispatcher
(:mod:`memtool.kernels.lut_triton`) offers it as path ``"wgmma"`` when :func:`supports` says yes. The
plan and the k permutation are checked on the CPU by emulating the decode with torch
(``tests/kernels/test_lut_wgmma.py``); the kernel itself on the GPU against float64 by
``scripts/gpu_wgmma_sweep.py`` (every variant: bits, dtypes, group sizes, ragged M, split-K).
"""

from __future__ import annotations

from typing import Optional

import torch
import triton

from memtool.kernels import lut_layout
from memtool.kernels.lut_gemv import _counters
from memtool.kernels.lut_triton import _reduce_kernel
from memtool.kernels.lut_wgmma_plan import (
    BITS_OK,
    MANTISSA,
    PAD_TILES,
    TILE_K,
    _fma_asm_text,
    pair_plan,
    prep_activations,
    tile_params,
)

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


# ---------------------------------------------------------------------------------------------- kernel
if HAVE_GLUON:
    _fma_asm = triton.constexpr_function(_fma_asm_text)
    PADT = gl.constexpr(PAD_TILES)

    @gluon.jit
    def _sel6(s0, s1, s2, s3, s4, s5, I: gl.constexpr):
        """Argument I (a compile-time index: the words of a plane, the buffers of a ring slot)."""
        if I == 0:
            r = s0
        elif I == 1:
            r = s1
        elif I == 2:
            r = s2
        elif I == 3:
            r = s3
        elif I == 4:
            r = s4
        else:
            r = s5
        return r

    @gluon.jit
    def _ring6(dtype: gl.constexpr, shape: gl.constexpr, layout: gl.constexpr):
        """Six separately allocated shared-memory buffers (the slots of a ring; the kernel uses the first H)."""
        return (gl.allocate_shared_memory(dtype, shape, layout), gl.allocate_shared_memory(dtype, shape, layout),
                gl.allocate_shared_memory(dtype, shape, layout), gl.allocate_shared_memory(dtype, shape, layout),
                gl.allocate_shared_memory(dtype, shape, layout), gl.allocate_shared_memory(dtype, shape, layout))

    @gluon.jit
    def _pair(w0, w1, w2, w3, magic, s2, b2, T: gl.constexpr, PLAN: gl.constexpr, BITS: gl.constexpr,
              BF16: gl.constexpr, FOLD: gl.constexpr):  # fmt: skip
        """Pair T of every (row, unit) of the thread's words -> [R, 4, 2] fp16 / bf16: raw, the magic-number
        pair itself (``magic + code * 2^f``: one lop3, the prep scaled the activations by ``2^-f``); with FOLD
        the weights ``code * s + b`` (s2, b2: the row's scale and bias, twice in an int32)."""
        WORD: gl.constexpr = PLAN[T][0]
        SB: gl.constexpr = PLAN[T][1]
        F: gl.constexpr = PLAN[T][2]
        if WORD < 0:  # 3-bit codes 30/31: bit i of each is bit 15 / 31 of word i
            v = ((w0 >> 15) & 0x10001) | ((w1 >> 14) & 0x20002) | ((w2 >> 13) & 0x40004) | magic
        else:
            w = _sel6(w0, w1, w2, w3, w3, w3, WORD)
            if SB > 0:
                w = w >> SB
            v = (w & (((1 << BITS) - 1) << F) * 0x10001) | magic
        if FOLD:
            lo, hi = gl.inline_asm_elementwise(_fma_asm(F, BF16, True), "=h,=h,r,r,r", [v, s2, b2],
                                               dtype=(gl.int16, gl.int16), is_pure=True, pack=1)  # fmt: skip
        else:
            lo, hi = gl.inline_asm_elementwise("mov.b32 {$0, $1}, $2;", "=h,=h,r", [v], dtype=(gl.int16, gl.int16),
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
    def _scale(acc, d, sc, bi, xs, xo):
        """acc += s * (codes . x) + b * sum(x), where d = (magic + codes * 2^f) . (x * 2^-f) = xo + codes . x."""
        return acc + sc[:, None] * (d - xo[None, :]) + bi[:, None] * xs[None, :]

    @gluon.jit
    def _packed_params(tp_ptr, prow, g, BF16: gl.constexpr):
        """FOLD: the group's scale and bias of the thread's rows (tile-major parameter words, see _params), each
        as two fp16/bf16 copies in an int32, broadcast over the [BN, 4] word layout of prow's parent."""
        pv = gl.load(tp_ptr + prow + g * 64)
        si = pv & 0xFFFF
        bi = (pv >> 16) & 0xFFFF
        if BF16:
            si = si.to(gl.int16).to(gl.float16, bitcast=True).to(gl.float32).to(gl.bfloat16)
            bi = bi.to(gl.int16).to(gl.float16, bitcast=True).to(gl.float32).to(gl.bfloat16)
            si = si.to(gl.int16, bitcast=True).to(gl.int32) & 0xFFFF
            bi = bi.to(gl.int16, bitcast=True).to(gl.int32) & 0xFFFF
        return (si | (si << 16))[:, None], (bi | (bi << 16))[:, None]

    @gluon.jit
    def _finish(acc, out_ptr, ws_ptr, cnt_ptr, rows, ms, mmask, M, N, pid_s, cidx, NSPLIT, SPLIT: gl.constexpr):
        """Store the [BN, BM] result. SPLIT % 4 == 1: partial sums of a K-range go to ws[pid_s]; the program
        counts itself in cnt[cidx] and the last one of the block adds the partials in a fixed order
        (deterministic), stores the output and resets the counter (no reduction launch). SPLIT % 4 == 2: only
        the partials (a reduction kernel adds them: better when the partial tiles are large). SPLIT >= 4: the
        same with 64-bit offsets (M x N x split >= 2^31)."""
        if SPLIT >= 4:  # M x N x split passes 2^31 elements: 64-bit offsets (M may be a constexpr 1)
            off = ms.to(gl.int64)[None, :] * N + rows[:, None]
            mn = N.to(gl.int64) * M
        else:
            off = ms[None, :] * N + rows[:, None]
            mn = M * N
        omask = mmask[None, :] & (rows < N)[:, None]
        if SPLIT % 4 == 0:
            gl.store(out_ptr + off, acc.to(out_ptr.dtype.element_ty), mask=omask)
        else:
            gl.store(ws_ptr + pid_s * mn + off, acc, mask=omask)
            if SPLIT % 4 == 1:
                gl.thread_barrier()  # every thread's partials are written before the (release) count
                done = gl.atomic_add(cnt_ptr + cidx, 1, sem="acq_rel")
                if done == NSPLIT - 1:
                    tot = acc * 0.0
                    for s_ in range(0, NSPLIT):
                        tot += gl.load(ws_ptr + s_ * mn + off, mask=omask, other=0.0, cache_modifier=".cg")
                    gl.store(out_ptr + off, tot.to(out_ptr.dtype.element_ty), mask=omask)
                    gl.atomic_xchg(cnt_ptr + cidx, 0)

    @gluon.jit
    def _fill(xb, wb, xit, wit, wmask, xmask, C: gl.constexpr, BITS: gl.constexpr, BM: gl.constexpr,
              X: gl.constexpr, W: gl.constexpr, XM: gl.constexpr):  # fmt: skip
        """cp.async the activations (X; XM: only the rows in ``xmask``, i.e. below M: at M=1 one row of the 8
        of the tile, an eighth of the L2 reads; measured on an H200: 36.7 -> 36.2 us, 3-bit 8192x28672) and words
        (W, where ``wmask``) of tile C of the loop iteration whose first tiles are at ``xit`` and ``wit`` into a
        slot's two buffers (no commit): a constant offset, an immediate of the copy instruction."""
        if X:
            if XM:
                async_copy_global_to_shared(xb, xit + C * (BM * 128), mask=xmask)
            else:
                async_copy_global_to_shared(xb, xit + C * (BM * 128))
        if W:
            async_copy_global_to_shared(wb, wit + C * (BITS * 256), mask=wmask)

    @gluon.jit
    def _side_sources(tp_ptr, xs_ptr, pid_n, pid_m, NT, BN: gl.constexpr, BM: gl.constexpr, CL: gl.constexpr):
        """A tile's group parameters (BN ``s | b << 16`` words, :func:`tile_params`) and activation sums (BM
        columns x (sum, magic * sum) fp32, :func:`prep_activations`) come by cp.async with its words, into a
        [_side_rows(BN, BM), 4] int32 side buffer of the slot, one 16-byte row a thread (threads past its rows hold
        copies of the first ones and issue nothing): rows 0..BN/4-1 the parameters (4 rows of one row block a
        chunk), BM/2 rows from max(BN/4, BM/2) on the sums, the rest masked. Returns each thread's source of tile 0,
        how far it moves a tile (int32 words: 64 for both up to BM = 32, so that the slots of an iteration differ by
        immediates) and the mask."""
        r = gl.arange(0, _side_rows(BN, BM), layout=gl.SliceLayout(1, CL))
        c = gl.arange(0, 4, layout=gl.SliceLayout(0, CL))
        NP: gl.constexpr = BN // 4
        SO: gl.constexpr = max(NP, BM // 2)  # the sums' first row (a shared-memory slice starts at a multiple
        q = r * 4  # of its length)
        SR: gl.constexpr = max(BM, 32)  # rows of a tile of the sums
        isp = r < NP
        poff = (pid_n * (BN // 64) + q // 64) * ((NT + PADT) * 64) + q % 64
        soff = pid_m * (NT + PADT) * (SR * 2) + (r - SO) * 4
        base = gl.where(isp, tp_ptr, xs_ptr.to(gl.pointer_type(gl.int32), bitcast=True)) + gl.where(isp, poff, soff)
        used = isp | ((r >= SO) & (r < SO + BM // 2))
        step = gl.where(isp, 64, SR * 2)
        return (base[:, None] + c[None, :]), step[:, None], used[:, None] & (c < 4)[None, :]

    @gluon.jit
    def _side_params(sb, BN: gl.constexpr, BM: gl.constexpr, MMA: gl.constexpr, SL4: gl.constexpr,
                     WSL: gl.constexpr):  # fmt: skip
        """A tile's group scale and bias of the rows (fp32) and its two sums per column (16 bytes a column pair),
        from the slot's side buffer, in the accumulator's row / column layouts (no data movement). Read from
        shared memory after the wgmma is issued, they hold no registers across the tile (M=1: 80 -> 72
        registers; M=16: 96 without spills)."""
        NP: gl.constexpr = BN // 4
        L1: gl.constexpr = gl.SwizzledSharedLayout(vec=1, per_phase=1, max_phase=1, order=[0])
        pv = sb.slice(0, NP)._reinterpret(gl.int32, [BN], L1).load(gl.SliceLayout(1, MMA))
        sc, bi = gl.inline_asm_elementwise(
            "{ .reg .b16 l, h; mov.b32 {l, h}, $2; cvt.f32.f16 $0, l; cvt.f32.f16 $1, h; }", "=r,=r,r", [pv],
            dtype=(gl.float32, gl.float32), is_pure=True, pack=1)  # fmt: skip
        v = sb.slice(max(NP, BM // 2), BM // 2)._reinterpret(gl.float32, [BM // 2, 4], WSL).load(SL4)
        xs, xo = gl.split(gl.reshape(v, [BM // 2, 2, 2]))
        COL: gl.constexpr = gl.SliceLayout(0, MMA)
        xs = gl.convert_layout(gl.reshape(xs, [BM]), COL, assert_trivial=True)
        xo = gl.convert_layout(gl.reshape(xo, [BM]), COL, assert_trivial=True)
        return sc, bi, xs, xo

    @gluon.jit
    def _slot_words(wb, LW: gl.constexpr, BN: gl.constexpr, BITS: gl.constexpr):
        """A slot's words ([4 planes x BN rows, 4 units]) into the thread's registers."""
        w0 = wb.slice(0, BN).load(LW)
        w1 = wb.slice(BN, BN).load(LW)
        w2 = w0
        w3 = w0
        if BITS > 2:
            w2 = wb.slice(2 * BN, BN).load(LW)
        if BITS > 3:
            w3 = wb.slice(3 * BN, BN).load(LW)
        return w0, w1, w2, w3

    @gluon.jit
    def _coords(xp_ptr, pid_n, pid_m, M, NTP, BN: gl.constexpr, BM: gl.constexpr, MMA: gl.constexpr,
                XL: gl.constexpr):  # fmt: skip
        """The program's output rows and activation rows (accumulator layout), the sources of its [BM, 128]
        activation tile (tile 0 of row block pid_m of the prep's [MB, NTP, BM, 128]) and the mask of its rows
        below M (the prep's rows past M are zeros, so copying them is optional: column m of the product depends
        only on row m of the tile, and the columns past M are never stored)."""
        rows = pid_n * BN + gl.arange(0, BN, layout=gl.SliceLayout(1, MMA))
        ms = pid_m * BM + gl.arange(0, BM, layout=gl.SliceLayout(0, MMA))
        xm = gl.arange(0, BM, layout=gl.SliceLayout(1, XL))
        xk = gl.arange(0, 128, layout=gl.SliceLayout(0, XL))
        xb = xp_ptr + pid_m.to(gl.int64) * NTP * (BM * 128)
        xmask = (xm < M - pid_m * BM)[:, None] & (xk < 128)[None, :]
        return rows, ms, ms < M, xb + xm[:, None] * 128 + xk[None, :], xmask

    @triton.constexpr_function
    def _side_rows(BN, BM):
        """Rows of 16 bytes in a slot's side buffer: BN/4 of parameters, then BM/2 of sums from max(BN/4, BM/2) on,
        rounded up to a power of two (512 bytes for 64 rows up to BM = 32)."""
        return triton.next_power_of_2(max(BN // 4, BM // 2) + BM // 2)

    @triton.constexpr_function
    def _x_layout(BM, NW):
        """Copy layout of a [BM, 128] activation tile, 16 bytes a copy, each warp's copy 512 contiguous bytes.
        BM = 4 * NW (two copies a thread): a warp copies rows 4w..4w+3 (rows +2 the second time), so that a
        thread's two sources are 512 bytes apart, an immediate offset of the copy instruction (it reaches
        +-2 KiB: rows 8 apart would need a second 64-bit address a tile)."""
        if BM == 4 * NW:
            return gl.DistributedLinearLayout(
                reg_bases=[[0, 1], [0, 2], [0, 4], [2, 0]], lane_bases=[[0, 8], [0, 16], [0, 32], [0, 64], [1, 0]],
                warp_bases=[[4 << i, 0] for i in range(NW.bit_length() - 1)], block_bases=[],
                shape=[BM, 128])  # fmt: skip
        return gl.BlockedLayout([1, 8], [2, 16], [NW, 1], [1, 0])

    @triton.constexpr_function
    def _w_layout(NW):
        """Copy layout of a slot's words [64 * NW rows of 16 bytes, 4]: warp w copies rows 64w..64w+31, then 32
        rows further (one address register a thread for both, as in :func:`_x_layout`)."""
        return gl.DistributedLinearLayout(
            reg_bases=[[0, 1], [0, 2], [32, 0]], lane_bases=[[1, 0], [2, 0], [4, 0], [8, 0], [16, 0]],
            warp_bases=[[64 << i, 0] for i in range(NW.bit_length() - 1)], block_bases=[],
            shape=[64 * NW, 4])  # fmt: skip

    @gluon.jit
    def _gdc_wait():
        """griddepcontrol.wait: block until the grids this one depends on (the activation prep, launched
        before it with programmatic dependent launch) have finished and their writes are visible."""
        gl.inline_asm_elementwise("griddepcontrol.wait; // $0", "=r", [], dtype=gl.int32, is_pure=False, pack=1)

    @gluon.jit
    def _raw_kernel(xp_ptr, xs_ptr, q_ptr, tp_ptr, out_ptr, ws_ptr, cnt_ptr, M, N, KU, NT, TPS,
                    NSPLIT, magic, times_ptr, BITS: gl.constexpr, BN: gl.constexpr, BM: gl.constexpr,
                    PLAN: gl.constexpr, BF16: gl.constexpr, NW: gl.constexpr, H: gl.constexpr, SPLIT: gl.constexpr,
                    SL4: gl.constexpr, PDL: gl.constexpr, XM: gl.constexpr, TIMES: gl.constexpr,
                    TRIG: gl.constexpr):  # fmt: skip
        """Program (BN = 16 * NW rows, K-range of TPS tiles, BM activation rows): y^T = W x^T on the tensor
        cores; A = raw decoded codes in registers, B = the prepped activation tile in shared memory.

        Each tile's words and activations stream into shared memory by cp.async, H - 1 tiles ahead (deep
        enough to keep DRAM busy without holding words in registers). The loop is unrolled over the H slots:
        each has its own buffers, so Triton's barrier analysis sees that a copy and a read touch different
        memory and one barrier per tile suffices (the one that frees the slot refilled next). The sources move a
        constant stride a tile, so the copies of an iteration's slots differ by immediates (no clamping: a tile
        past the range brings zero activations and sums, see below). PDL: launched with programmatic dependent
        launch after the prep, the program requests its first tiles' words before it waits for it. TRIG: once its
        loop is done, the program lets a grid launched after this one by programmatic dependent launch (the next
        call's prep) start: the last programs' split-K fix-up and the kernel's end hide that launch."""
        pid_n = gl.program_id(0)
        pid_s = gl.program_id(1)
        pid_m = gl.program_id(2)
        if TIMES:
            t_start = _timer()
        WB: gl.constexpr = [[16, 0], [32, 0]] if NW == 4 else [[16, 0], [32, 0], [64, 0]]
        LW: gl.constexpr = gl.DistributedLinearLayout(
            reg_bases=[[8, 0]], lane_bases=[[0, 1], [0, 2], [1, 0], [2, 0], [4, 0]], warp_bases=WB, block_bases=[],
            shape=[BN, 4])  # fmt: skip
        MMA: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[NW, 1], instr_shape=[16, BM, 16])
        A: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=MMA, k_width=2)
        XL: gl.constexpr = _x_layout(BM, NW)
        XSL: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)
        CL: gl.constexpr = gl.BlockedLayout([1, 4], [32, 1], [NW, 1], [1, 0])  # side buffer: a row a thread
        WL: gl.constexpr = _w_layout(NW)
        WSL: gl.constexpr = gl.SwizzledSharedLayout(vec=1, per_phase=1, max_phase=1, order=[1, 0])
        XT: gl.constexpr = xp_ptr.dtype.element_ty
        x0, x1, x2, x3, x4, x5 = _ring6(XT, [BM, 128], XSL)  # per slot: activations,
        v0, v1, v2, v3, v4, v5 = _ring6(gl.int32, [4 * BN, 4], WSL)  # words,
        s0, s1, s2, s3, s4, s5 = _ring6(gl.int32, [_side_rows(BN, BM), 4], WSL)  # parameters and sums
        ssrc, sstep, smask = _side_sources(tp_ptr, xs_ptr, pid_n, pid_m, NT, BN, BM, CL)
        # word sources of one tile, slot row i = plane * BN + row (tile layout: 64-row blocks of 4 units a plane)
        ci = gl.arange(0, 4 * BN, layout=gl.SliceLayout(1, WL))
        cu = gl.arange(0, 4, layout=gl.SliceLayout(0, WL))
        cr = ci % BN
        woff = (ci // BN) * 256 + (cr // 64) * (64 * BITS) * KU + (cr % 64) * 4
        wsrc = q_ptr + (pid_n * BN).to(gl.int64) * (BITS * KU) + woff[:, None] + cu[None, :]
        wmask = (ci < BITS * BN)[:, None] & (cu < 4)[None, :]
        rows, ms, mmask, xrow, xmask = _coords(xp_ptr, pid_n, pid_m, M, NT + PADT, BN, BM, MMA, XL)
        acc = gl.zeros([BN, BM], gl.float32, MMA)
        zero = gl.zeros([BN, BM], gl.float32, MMA)
        t_beg = pid_s * TPS
        t_end = gl.minimum(t_beg + TPS, NT)
        # Tiles past the range: the words are not copied (masked), the activations and sums are the prep's zero
        # padding (PADT tiles past NT; the next split's tiles for a split that ends before NT, never used), so such
        # a tile adds s * (0 - 0) + b * 0 = 0 with finite parameters (tile_params is padded as well).
        xit = xrow + t_beg * (BM * 128)  # the first tiles of an iteration (64-bit adds once an iteration)
        wit = wsrc + t_beg * (BITS * 256)
        sit = ssrc + t_beg * sstep
        if PDL:  # the words do not depend on the prep: request the first slots' before waiting for it
            for hh in gl.static_range(H - 1):
                _fill(x0, _sel6(v0, v1, v2, v3, v4, v5, hh), xit, wit, wmask & (t_beg + hh < t_end), xmask, hh,
                      BITS, BM, False, True, XM)  # fmt: skip
            _gdc_wait()
        for hh in gl.static_range(H - 1):  # prologue: the first H - 1 slots
            _fill(_sel6(x0, x1, x2, x3, x4, x5, hh), _sel6(v0, v1, v2, v3, v4, v5, hh), xit, wit,
                  wmask & (t_beg + hh < t_end), xmask, hh, BITS, BM, True, not PDL, XM)  # fmt: skip
            async_copy_global_to_shared(_sel6(s0, s1, s2, s3, s4, s5, hh), sit + hh * sstep, mask=smask)
            commit_group()
        for t in range(t_beg, t_end, H):
            for h in gl.static_range(H):
                # the refill of slot h - 1 brings tile t + h + H - 1: its words only if in the range
                wait_group(H - 2)  # this thread's copies of this tile have landed
                gl.thread_barrier()  # everyone's have, and every warp is done with the previous tile's slot
                fence_async_shared()  # after the barrier: a barrier right after the wait (none added by Triton)
                _fill(_sel6(x0, x1, x2, x3, x4, x5, (h + H - 1) % H), _sel6(v0, v1, v2, v3, v4, v5, (h + H - 1) % H),
                      xit, wit, wmask & (t + h + H - 1 < t_end), xmask, h + H - 1, BITS, BM, True, True,
                      XM)  # fmt: skip
                async_copy_global_to_shared(_sel6(s0, s1, s2, s3, s4, s5, (h + H - 1) % H), sit + (h + H - 1) * sstep,
                                            mask=smask)  # fmt: skip
                commit_group()
                a0, a1, a2, a3 = _slot_words(_sel6(v0, v1, v2, v3, v4, v5, h), LW, BN, BITS)
                aa = _a_tile(a0, a1, a2, a3, magic, magic, magic, A, BN, PLAN, BITS, BF16, False)
                d = warpgroup_mma(aa, _sel6(x0, x1, x2, x3, x4, x5, h).permute((1, 0)), zero, use_acc=False,
                                  is_async=True)  # fmt: skip
                sc, bi, xs, xo = _side_params(_sel6(s0, s1, s2, s3, s4, s5, h), BN, BM, MMA, SL4, WSL)
                d = warpgroup_mma_wait(0, deps=[d])
                acc = _scale(acc, d, sc, bi, xs, xo)
            xit += H * (BM * 128)
            wit += H * (BITS * 256)
            sit += H * sstep
        wait_group(0)
        if TRIG:  # the next call's prep may launch now (it waits for our end before it reads anything)
            gl.inline_asm_elementwise("griddepcontrol.launch_dependents; // $0", "=r", [], dtype=gl.int32,
                                      is_pure=False, pack=1)  # fmt: skip
        _finish(acc, out_ptr, ws_ptr, cnt_ptr, rows, ms, mmask, M, N, pid_s, pid_m * gl.num_programs(0) + pid_n,
                NSPLIT, SPLIT)  # fmt: skip
        if TIMES:  # (diagnostics) when the program started and ended (ns, %globaltimer) and on which SM
            t_end_ = _timer()
            lin = (pid_m * gl.num_programs(1) + pid_s) * gl.num_programs(0) + pid_n
            smid = gl.inline_asm_elementwise("mov.u32 $0, %smid;", "=r", [], dtype=gl.int32, is_pure=False, pack=1)
            gl.store(times_ptr + 3 * lin, t_start)
            gl.store(times_ptr + 3 * lin + 1, t_end_)
            gl.store(times_ptr + 3 * lin + 2, smid.to(gl.int64))

    @gluon.jit
    def _timer():
        """%globaltimer, ns."""
        return gl.inline_asm_elementwise("mov.u64 $0, %globaltimer;", "=l", [], dtype=gl.int64, is_pure=False, pack=1)

    @gluon.jit
    def _fold_kernel(xp_ptr, q_ptr, tp_ptr, out_ptr, ws_ptr, cnt_ptr, M, N, KU, NT, TPS, NSPLIT, magic,
                     BITS: gl.constexpr, BN: gl.constexpr, BM: gl.constexpr, PLAN: gl.constexpr,
                     BF16: gl.constexpr, NW: gl.constexpr, RB: gl.constexpr, STAGES: gl.constexpr,
                     SPLIT: gl.constexpr):  # fmt: skip
        """Large BM: the decode makes the weights ``code * s + b`` (fp16/bf16, one rounding a weight) and
        wgmma accumulates over the whole K-range: no per-tile scaling (M=64: 120 -> 88 us). Words two tiles
        ahead in registers, activations (unscaled) through a STAGES-deep cp.async ring."""
        pid_n = gl.program_id(0)
        pid_s = gl.program_id(1)
        pid_m = gl.program_id(2)
        WB: gl.constexpr = [[16, 0], [32, 0]] if NW == 4 else [[16, 0], [32, 0], [64, 0]]
        LW: gl.constexpr = gl.DistributedLinearLayout(
            reg_bases=RB, lane_bases=[[0, 1], [0, 2], [1, 0], [2, 0], [4, 0]], warp_bases=WB, block_bases=[],
            shape=[BN, 4])  # fmt: skip
        MMA: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[NW, 1], instr_shape=[16, BM, 16])
        A: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=MMA, k_width=2)
        XL: gl.constexpr = _x_layout(BM, NW)
        XSL: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)
        xsm = gl.allocate_shared_memory(xp_ptr.dtype.element_ty, [STAGES, BM, 128], XSL)  # ring of tiles
        r = gl.arange(0, BN, layout=gl.SliceLayout(1, LW))
        u = gl.arange(0, 4, layout=gl.SliceLayout(0, LW))
        woff = ((r // 64) * (64 * BITS) * KU + (r % 64) * 4)[:, None] + u[None, :]
        prow = (pid_n * (BN // 64) + r // 64) * ((NT + PADT) * 64) + r % 64  # tile-major parameter words (tile 0)
        qb = q_ptr + (pid_n * BN).to(gl.int64) * (BITS * KU)
        rows, ms, mmask, xrow, _ = _coords(xp_ptr, pid_n, pid_m, M, NT + PADT, BN, BM, MMA, XL)
        acc = gl.zeros([BN, BM], gl.float32, MMA)
        t_beg = pid_s * TPS
        t_end = gl.minimum(t_beg + TPS, NT)
        tl_ = t_end - 1
        for j in gl.static_range(STAGES - 1):
            async_copy_global_to_shared(xsm.index(j), xrow + gl.minimum(t_beg + j, tl_) * (BM * 128))
            commit_group()
        n0, n1, n2, n3 = _words(qb, woff, t_beg, BITS)
        m0, m1, m2, m3 = _words(qb, woff, gl.minimum(t_beg + 1, tl_), BITS)
        for t in range(t_beg, t_end):
            i = t - t_beg
            w0, w1, w2, w3 = n0, n1, n2, n3
            n0, n1, n2, n3 = m0, m1, m2, m3
            m0, m1, m2, m3 = _words(qb, woff, gl.minimum(t + 2, tl_), BITS)
            s2, b2 = _packed_params(tp_ptr, prow, t, BF16)
            a = _a_tile(w0, w1, w2, w3, magic, s2, b2, A, BN, PLAN, BITS, BF16, True)
            wait_group(STAGES - 2)  # this thread's copy of tile t's activations has landed
            fence_async_shared()
            gl.thread_barrier()  # everyone's has, and every warp is done with tile t-1's stage
            tn = gl.minimum(t + STAGES - 1, tl_)
            async_copy_global_to_shared(xsm.index((i + STAGES - 1) % STAGES), xrow + tn * (BM * 128))
            commit_group()
            acc = warpgroup_mma(a, xsm.index(i % STAGES).permute((1, 0)), acc)
        wait_group(0)
        _finish(acc, out_ptr, ws_ptr, cnt_ptr, rows, ms, mmask, M, N, pid_s, pid_m * gl.num_programs(0) + pid_n,
                NSPLIT, SPLIT)  # fmt: skip


def sums_layout(bm: int, num_warps: int):
    """Distributed layout of a tile's activation sums as [BM/2, 4] (column pair p, then (column 2p, 2p + 1) x
    (sum, magic * sum), 16 contiguous bytes): each thread holds the pairs of the accumulator columns it owns
    (wgmma: columns 2 * (lane % 4) + {0, 1} + 8 j) in one 16-byte load; lanes with the same lane % 4 and all
    warps hold copies."""
    regs = [[0, 1], [0, 2]] + [[c // 2, 0] for c in (8, 16, 32) if c < bm]
    return gl.DistributedLinearLayout(
        reg_bases=regs, lane_bases=[[1, 0], [2, 0], [0, 0], [0, 0], [0, 0]],
        warp_bases=[[0, 0]] * (num_warps.bit_length() - 1), block_bases=[], shape=[bm // 2, 4])  # fmt: skip


def row_bases(bn: int, num_warps: int) -> tuple[tuple[int, int], ...]:
    """Register bases of the word layout: row + 8, then the row blocks above what the warps cover."""
    out = [(8, 0)]
    r = 16 * num_warps
    while r < bn:
        out.append((r, 0))
        r *= 2
    return tuple(out)


def launch(x2: torch.Tensor, w, bm: int, bn: int, split: int, num_warps: int = 4, stages: int = 3,
           fold: Optional[bool] = None, maxnreg: int = 0, out: Optional[torch.Tensor] = None,
           pdl: int = 2, times: Optional[torch.Tensor] = None) -> torch.Tensor:  # fmt: skip
    """y = x2 @ W^T through the wgmma kernel (the caller checked :func:`supports`). ``fold`` (default:
    bm >= 32): the decode makes the weights ``code * s + b`` in fp16/bf16 (one rounding a weight, like a
    dequantized model) and wgmma accumulates over all of K, instead of raw codes scaled in fp32 per tile
    (measured on an H200 at M=64: 120 -> 88 us; max relative error 3.1e-4 vs 2.1e-4); ``stages``: the raw
    kernel's slots H (2-6: tiles copied H - 1 ahead), the folded kernel's activation ring depth; ``maxnreg``:
    register cap per thread (0: ptxas decides); ``pdl`` (programmatic dependent launch, raw kernel): 1, the
    kernel starts while the activation prep runs and requests its first words before it waits for the prep
    (H100: 0.5-1 us of 47-60); 2 (default), the prep is launched that way too (it waits for the end of the grid
    before it, then reads x) and the kernel lets the next grid launch once its loop is done, so that back-to-back
    calls hide the prep's launch (H200, 8192x28672: M=16 39.3-39.8 -> 38.6-39.0 us 4-bit, 40.6-41.2 -> 39.8-41.1
    3-bit; M=1 4-bit 35.0-35.6 -> 34.2-34.4, 3-bit 31.1-31.8 -> 31.6-31.8); ``times`` (diagnostics, raw kernel only):
    an int64 [programs, 3] tensor that gets each program's start and end (%globaltimer, ns) and SM
    (``scripts/gpu_timeline.py``). Split-K partials are added by the last program of each row block (no extra
    launch), or at large M (big partial tiles) by a reduction kernel."""
    m, k = x2.shape
    n = w.out_features
    ku = lut_layout.num_units(k)
    nt = ku // lut_layout.UNIT_TILE
    if fold is None:
        fold = bm >= 32
    halves = max(2, min(6, stages))  # the raw kernel's H slots
    step = 1 if fold else halves  # tiles per iteration
    split = max(1, min(split, nt))
    tps = -(-(-(-nt // split)) // step) * step
    split = -(-nt // tps)
    if n % bn:
        bn, num_warps = lut_layout.ROW_BLOCK, 4
    if not 16 * num_warps <= bn <= 32 * num_warps or num_warps not in (4, 8):
        raise ValueError(f"wgmma: {num_warps} warps cannot cover {bn} rows (16-32 rows a warp)")
    if not fold and bn != 16 * num_warps:
        raise ValueError(f"wgmma: the raw kernel takes 16 rows a warp ({bn} rows, {num_warps} warps)")
    if out is None:
        out = torch.empty(m, n, dtype=x2.dtype, device=x2.device)
    grid = (n // bn, split, triton.cdiv(m, bm))
    ws = out if split == 1 else torch.empty(split, m, n, dtype=torch.float32, device=x2.device)
    cnt = out if split == 1 else _counters(x2.device, grid[0] * grid[2])
    pdl = int(pdl) if not fold and x2.device.index not in _NO_PDL else 0
    try:
        xp, xs = prep_activations(x2, w.bits, raw=not fold, bm=bm, pdl=pdl > 0, wait=pdl > 1)
    except RuntimeError:  # a driver that cannot launch the prep programmatically: plain stream order from now on
        if pdl < 2:
            raise
        pdl = 0
        _NO_PDL.add(x2.device.index)
        xp, xs = prep_activations(x2, w.bits, raw=not fold, bm=bm)
    bf16 = x2.dtype == torch.bfloat16
    mode = 0 if split == 1 else (2 if fold else 1)  # fused split-K reduction, except for the large folded tiles
    mode += 4 if m * n * split >= 2**31 else 0
    args = (w.qweight, tile_params(w), out, ws, cnt, m, n, ku, nt, tps, split,
            0x43004300 if bf16 else 0x64006400)  # fmt: skip
    meta = dict(BITS=w.bits, BN=bn, BM=bm, PLAN=pair_plan(w.bits, MANTISSA[x2.dtype]), BF16=bf16, NW=num_warps,
                SPLIT=mode, num_warps=num_warps,
                **({"maxnreg": maxnreg} if maxnreg else {}))  # fmt: skip
    if fold:
        kern = _fold_kernel[grid](xp, *args, RB=row_bases(bn, num_warps), STAGES=max(2, stages), **meta)
    else:
        raw = dict(H=halves, SL4=sums_layout(bm, num_warps), XM=m % bm != 0, TIMES=times is not None,
                   TRIG=pdl > 1, **meta)  # fmt: skip
        args = args + (out if times is None else times,)
        try:
            kern = _raw_kernel[grid](xp, xs, *args, PDL=pdl > 0, **raw, **({"launch_pdl": True} if pdl else {}))
        except RuntimeError:  # a driver that cannot launch it programmatically: plain stream order from now on
            if not pdl:
                raise
            raw["TRIG"] = False
            kern = _raw_kernel[grid](xp, xs, *args, PDL=False, **raw)  # (raises again if that was not the cause)
            _NO_PDL.add(x2.device.index)
    if mode % 4 == 2:
        _reduce_kernel[(triton.cdiv(m * n, 1024),)](ws, out, m * n, split, BLOCK=1024)
    LAST["kernel"] = kern
    return out


LAST: dict = {}  # the last compiled kernel launched (scripts read its register count)
_NO_PDL: set = set()  # devices where a programmatic dependent launch failed
