"""Fast GEMV for affine LUT weights (``w = s*code + b`` per group): the M=1 decode path.

Why a second GEMV
-----------------
The generic GEMV (:mod:`memtool.kernels.lut_triton`) decodes two codes into fp16 halves and converts each to
fp32: ~5.7 SASS instructions per weight. Here every code becomes an fp32 number with ONE ``lop3`` and no
convert:

    h = bitcast_f32( (rotl(word, R) & (mask << T)) | 0x3F800000 ) = 1 + code * 2^(T-23)   (exact)

(the code lands in the mantissa at bit ``T``). The activation of the slot comes pre-scaled by ``2^(23-T)``
(exact: a power of two), so one FMA per weight ``part += h * x'`` adds ``x' + code * x``. Per unit (32 codes,
inside one group) the epilogue removes the constant part: ``y += s * (part - xb) + b * xs`` with
``xb = sum_j x'_j`` and ``xs = sum_j x_j`` per unit, computed once per activation row by ``_xprep_kernel``
(which also lays the activations out as fp32 ``[NT, 32, BU]`` tiles, so every slot is one contiguous vector
load shared by all rows of a thread). Split-K partial sums are added by the last program of each row block.

Targets ``T`` are kept in ``[12, 23 - bits]`` (precision: the constant part is at most 2^11 times a code
step, so fp32 keeps >= 12 bits of every product's code part; measured relative error ~1e-4). One rotation of a
word serves several codes (``decode_plan``): ~2.4 instructions per weight at 3 and 4 bits
(0.3-0.4 rotations + 1 lop3 + 1 FMA), no shuffles, no shared memory.

Layout: the words of :mod:`memtool.kernels.lut_layout` as stored (no repacking). Measured on an H200: 2.0-2.2x
cuBLAS fp16 at M=1 (docs/bench/lut_kernels.md).
"""

from __future__ import annotations

import functools
from typing import Optional

import torch
import triton
import triton.language as tl

from memtool.kernels import lut_layout
from memtool.kernels.lut_triton import _load_words, _sel, _tile_words, device_table

LO_TARGET = 12  # lowest mantissa bit a code may land on (precision floor, see module doc)
FIELD_BITS = 20  # one field of a slot's plan: word(3) | rot(5) << 3 | shift(5) << 8 | width(4) << 13
SLOT_BITS = 3 * FIELD_BITS


def _rot_target(pos: int, bits: int) -> tuple[int, int]:
    """(left rotation, target bit) that brings a ``bits``-wide field at ``pos`` into ``[12, 23 - bits]``.

    The rotations are shared by as many codes of a word as possible: 0, then +-d (d = the window width
    rounded down to whole codes), then 16 (the layout's two halves), else a rotation of its own."""
    lo, hi = LO_TARGET, 23 - bits
    d = ((hi - lo + 1) // bits) * bits
    for r in ((0, d, 32 - d, 16) if d else (0, 16)):
        t = (pos + r) % 32
        if lo <= t <= hi:
            return r % 32, t
    return (lo - pos) % 32, lo


@functools.lru_cache(maxsize=None)
def decode_plan(bits: int) -> tuple[tuple[tuple[tuple[int, int, int, int], ...], int], ...]:
    """Per unit slot j (0..31): ``(fields, target)``; each field ``(word, rot, shift, width)`` means
    ``rotl(words[word], rot) & (((1 << width) - 1) << shift)``; the OR of the fields is the code at bit
    ``target`` (a code split over several words, like 3-bit codes 30/31, has one field per bit)."""
    per: dict[int, list] = {j: [] for j in range(lut_layout.UNIT)}
    for j, word, pos, width, cbit in lut_layout.fields(bits):
        per[j].append((word, pos, width, cbit))
    plan = []
    for j in range(lut_layout.UNIT):
        fs = per[j]
        if len(fs) == 1:
            word, pos, width, _ = fs[0]
            r, t = _rot_target(pos, bits)
            plan.append((((word, r, t, width),), t))
        else:  # bit-sliced code: bit b -> target + b
            t = 15 if bits == 3 else LO_TARGET
            out = []
            for word, pos, width, cbit in fs:
                r = (t + cbit - pos) % 32
                out.append((word, r, t + cbit, width))
            plan.append((tuple(out), t))
    return tuple(plan)


@functools.lru_cache(maxsize=None)
def plan_fields(bits: int) -> int:
    """The plan as one Python int the kernel unpacks at compile time: 3 fields of 20 bits per slot."""
    out = 0
    for j, (fs, _) in enumerate(decode_plan(bits)):
        if len(fs) > 3:
            raise ValueError("a code split over more than 3 words")
        for i, (word, r, sh, width) in enumerate(fs):
            out |= (word | (r << 3) | (sh << 8) | (width << 13)) << (SLOT_BITS * j + FIELD_BITS * i)
    return out


def slot_bases(bits: int) -> list[float]:
    """2^(23 - target) per slot: the constant every decoded code carries."""
    return [float(2 ** (23 - t)) for _, t in decode_plan(bits)]


def emulate_decode(qweight: torch.Tensor, bits: int, in_features: int) -> torch.Tensor:
    """The kernel's decode in plain torch integer ops (for tests): ``[N, KU*32]`` float64 codes recovered
    as ``(h - 1) * 2^(23-T)``."""
    n = qweight.shape[0]
    ku = lut_layout.num_units(in_features)
    words = qweight.contiguous().view(-1)[lut_layout.word_offsets(n, bits, ku)].to(torch.int64) & 0xFFFFFFFF
    out = torch.zeros(n, ku, lut_layout.UNIT, dtype=torch.float64)
    for j, (fs, t) in enumerate(decode_plan(bits)):
        v = torch.zeros(n, ku, dtype=torch.int64)
        for word, r, sh, width in fs:
            w = words[:, word]
            rot = ((w << r) | (w >> (32 - r))) & 0xFFFFFFFF if r else w
            v |= rot & (((1 << width) - 1) << sh)
        v |= 0x3F800000
        h = torch.from_numpy(v.to(torch.int32).numpy().view("float32").copy()).to(torch.float64)
        out[:, :, j] = (h - 1.0) * 2.0 ** (23 - t)
    return out.view(n, ku * lut_layout.UNIT)


# ------------------------------------------------------------------------------------------------ kernels
@triton.jit
def _rotl(w, R: tl.constexpr):
    if R == 0:
        r = w
    else:
        u = w.to(tl.uint32, bitcast=True)
        r = ((u << R) | (u >> (32 - R))).to(tl.int32, bitcast=True)
    return r


@triton.jit
def _field(w0, w1, w2, w3, w4, w5, w6, w7, F: tl.constexpr):
    return _rotl(_sel(w0, w1, w2, w3, w4, w5, w6, w7, F & 7), (F >> 3) & 31) & (((1 << (F >> 13)) - 1) << ((F >> 8) & 31))


@triton.jit
def _slot_f32(w0, w1, w2, w3, w4, w5, w6, w7, magic, J: tl.constexpr, FIELDS: tl.constexpr):
    """fp32 ``1 + code * 2^(T-23)`` of unit slot J (see ``decode_plan``); the activation of the slot comes
    pre-scaled by ``2^(23-T)``, so the product is ``x * 2^(23-T) + code * x``. One exponent for every slot
    keeps one constant per ``lop3``: the mask is the immediate, ``magic`` (0x3F800000) a kernel argument
    held in one register (as a literal, ptxas would re-materialize a mask register for every code)."""
    v = _field(w0, w1, w2, w3, w4, w5, w6, w7, (FIELDS >> (60 * J)) & 0xFFFFF)  # 60 = SLOT_BITS, 20 = FIELD_BITS
    if ((FIELDS >> (60 * J + 20)) & 0xFFFFF) != 0:
        v = v | _field(w0, w1, w2, w3, w4, w5, w6, w7, (FIELDS >> (60 * J + 20)) & 0xFFFFF)
    if ((FIELDS >> (60 * J + 40)) & 0xFFFFF) != 0:
        v = v | _field(w0, w1, w2, w3, w4, w5, w6, w7, (FIELDS >> (60 * J + 40)) & 0xFFFFF)
    return (v | magic).to(tl.float32, bitcast=True)


@triton.jit
def _xprep_kernel(x_ptr, base_ptr, xt_ptr, xb_ptr, xs_ptr, K, KU, NT, stride_xm, BU: tl.constexpr):
    """x [M, K] -> xt [M, NT, 32, BU] fp32 (tile t, slot j, unit t*BU+i: x * 2^(23-T_j); 0 past K), and per
    unit xb = sum of xt, xs = sum of x ([M, NT*BU]). Program (t, m) does one tile of BU units."""
    t = tl.program_id(0)
    m = tl.program_id(1)
    units = t * BU + tl.arange(0, BU)
    slots = tl.arange(0, 32)
    k = units[:, None] * 32 + slots[None, :]
    x = tl.load(x_ptr + m.to(tl.int64) * stride_xm + k, mask=k < K, other=0.0).to(tl.float32)
    xs = tl.sum(x, axis=1)
    x = x * tl.load(base_ptr + slots)[None, :]  # exact: powers of two
    xb = tl.sum(x, axis=1)
    tile = (m.to(tl.int64) * NT + t) * 32 * BU
    tl.store(xt_ptr + tile + slots[None, :] * BU + tl.arange(0, BU)[:, None], x)
    row = m.to(tl.int64) * NT * BU
    tl.store(xb_ptr + row + units, xb)
    tl.store(xs_ptr + row + units, xs)


@triton.jit
def _tile_update(acc, w0, w1, w2, w3, w4, w5, w6, w7, u0, u_end, rows, rmask, xrow, xbrow, xsrow, s_ptr, b_ptr, G, GS,
                 magic, BN: tl.constexpr, BU: tl.constexpr, ONE_GROUP: tl.constexpr, EVEN: tl.constexpr,
                 FIELDS: tl.constexpr):  # fmt: skip
    """acc + the tile of BU units starting at u0 (words already loaded). Every vector is loaded as a
    [1, BU] or [BN, 1] tile of the words' layout, so nothing changes layout (no shared-memory shuffles)."""
    ii = tl.arange(0, BU)[None, :]
    umask = (u0 + ii) < u_end
    part = tl.zeros([BN, BU], dtype=tl.float32)
    xtile = xrow + (u0 // BU) * 32 * BU  # this tile's activations: [32, BU] contiguous
    for J in tl.static_range(32):
        if EVEN:
            xj = tl.load(xtile + J * BU + ii)
        else:
            xj = tl.load(xtile + J * BU + ii, mask=umask, other=0.0)
        part += _slot_f32(w0, w1, w2, w3, w4, w5, w6, w7, magic, J, FIELDS) * xj
    if EVEN:
        xb = tl.load(xbrow + u0 + ii)
        xs = tl.load(xsrow + u0 + ii)
    else:
        xb = tl.load(xbrow + u0 + ii, mask=umask, other=0.0)
        xs = tl.load(xsrow + u0 + ii, mask=umask, other=0.0)
    if ONE_GROUP:
        poff = rows[:, None] * G + (u0 * 32) // GS
        s = tl.load(s_ptr + poff, mask=rmask[:, None], other=0.0).to(tl.float32)
        b = tl.load(b_ptr + poff, mask=rmask[:, None], other=0.0).to(tl.float32)
    else:
        grp = tl.minimum(((u0 + ii) * 32) // GS, G - 1)
        poff = rows[:, None] * G + grp
        pmask = rmask[:, None] & umask
        s = tl.load(s_ptr + poff, mask=pmask, other=0.0).to(tl.float32)
        b = tl.load(b_ptr + poff, mask=pmask, other=0.0).to(tl.float32)
    return acc + s * (part - xb) + b * xs


@triton.jit
def _gemv_affine_kernel(
    xt_ptr, xb_ptr, xs_ptr, q_ptr, s_ptr, b_ptr, out_ptr, ws_ptr, cnt_ptr,
    N, KU, NT, G, GS, UPS, SPLIT, magic,
    BITS: tl.constexpr, BN: tl.constexpr, BU: tl.constexpr, ONE_GROUP: tl.constexpr, EVEN: tl.constexpr,
    FULL: tl.constexpr, FIELDS: tl.constexpr, STAGES: tl.constexpr,
):  # fmt: skip
    """One activation row (axis 2) x BN output rows x a K-range of units (axis 1, split-K).
    STAGES = 0: the next tile's words are prefetched into registers by hand; STAGES > 0: Triton's
    software pipeliner (``tl.range(num_stages=STAGES)``) stages the loads through shared memory.
    Split-K (SPLIT > 1) is reduced in the same launch: each program stores its fp32 partial sums to
    ``ws``, then counts itself in ``cnt[m, pid_n]``; the last program of a row block adds the SPLIT partials
    in a fixed order (deterministic), writes the output and resets the counter to 0."""
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    m = tl.program_id(2)
    rows = pid_n * BN + tl.arange(0, BN)
    rmask = rows < N
    xrow = xt_ptr + m.to(tl.int64) * NT * 32 * BU
    xbrow = xb_ptr + m.to(tl.int64) * NT * BU
    xsrow = xs_ptr + m.to(tl.int64) * NT * BU
    acc = tl.zeros([BN, BU], dtype=tl.float32)
    u_beg = pid_s * UPS
    u_end = tl.minimum(u_beg + UPS, KU)
    if STAGES == 0:
        n0, n1, n2, n3, n4, n5, n6, n7 = _tile_words(q_ptr, rows, rmask, u_beg, u_end, N, KU, BITS, FULL, EVEN, BU)
        for u0 in range(u_beg, u_end, BU):
            w0, w1, w2, w3, w4, w5, w6, w7 = n0, n1, n2, n3, n4, n5, n6, n7
            n0, n1, n2, n3, n4, n5, n6, n7 = _tile_words(q_ptr, rows, rmask, u0 + BU, u_end, N, KU, BITS, FULL, EVEN,
                                                         BU)  # fmt: skip
            acc = _tile_update(acc, w0, w1, w2, w3, w4, w5, w6, w7, u0, u_end, rows, rmask, xrow, xbrow, xsrow,
                               s_ptr, b_ptr, G, GS, magic, BN, BU, ONE_GROUP, EVEN, FIELDS)  # fmt: skip
    else:
        for u0 in tl.range(u_beg, u_end, BU, num_stages=STAGES):
            units = tl.max_contiguous(tl.multiple_of(u0 + tl.arange(0, BU), BU), BU)
            if EVEN:
                wmask = rmask[:, None]
            else:
                wmask = rmask[:, None] & (units < u_end)[None, :]
            w0, w1, w2, w3, w4, w5, w6, w7 = _load_words(q_ptr, rows, units, N, KU, wmask, BITS, FULL)
            acc = _tile_update(acc, w0, w1, w2, w3, w4, w5, w6, w7, u0, u_end, rows, rmask, xrow, xbrow, xsrow,
                               s_ptr, b_ptr, G, GS, magic, BN, BU, ONE_GROUP, EVEN, FIELDS)  # fmt: skip
    y = tl.sum(acc, axis=1)
    orow = m.to(tl.int64) * N + rows
    if SPLIT == 1:
        tl.store(out_ptr + orow, y.to(out_ptr.dtype.element_ty), mask=rmask)
    else:
        MN = N * tl.num_programs(2).to(tl.int64)
        tl.store(ws_ptr + pid_s * MN + orow, y, mask=rmask)
        tl.debug_barrier()  # every thread's partials are written before the (release) count
        cidx = m * tl.num_programs(0) + pid_n
        done = tl.atomic_add(cnt_ptr + cidx, 1, sem="acq_rel")
        if done == SPLIT - 1:
            tot = tl.zeros([BN], dtype=tl.float32)
            for s_ in range(0, SPLIT):
                tot += tl.load(ws_ptr + s_ * MN + orow, mask=rmask, other=0.0, cache_modifier=".cg")
            tl.store(out_ptr + orow, tot.to(out_ptr.dtype.element_ty), mask=rmask)
            tl.atomic_xchg(cnt_ptr + cidx, 0)


# --------------------------------------------------------------------------------------------------- host
_COUNTERS: dict = {}


def _counters(device, n: int) -> torch.Tensor:
    """Zeroed int32 split-K counters, one buffer per (device, stream): every launch leaves them at 0 (the last
    program of a block resets its counter), so calls on one stream can share them and a CUDA graph has no
    memset per call. Made during a graph capture, the buffer comes from the graph's pool and its zeroing is one
    node of the graph (one memset per replay, not per call). (Graphs captured on one stream must not be replayed
    concurrently.)"""
    stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
    key = (str(device), stream)
    t = _COUNTERS.get(key)
    if t is None or t.numel() < n:
        t = torch.zeros(max(n, 4096), dtype=torch.int32, device=device)
        _COUNTERS[key] = t
    return t


def prep_activations(x2: torch.Tensor, bits: int, bu: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(xt [M, NT, 32, BU] fp32, xb [M, NT*BU], xs [M, NT*BU]) for ``launch_affine`` (NT = ceil(KU/BU))."""
    m, k = x2.shape
    nt = -(-lut_layout.num_units(k) // bu)
    dev = x2.device
    xt = torch.empty(m, nt, 32, bu, dtype=torch.float32, device=dev)
    xb = torch.empty(m, nt * bu, dtype=torch.float32, device=dev)
    xs = torch.empty(m, nt * bu, dtype=torch.float32, device=dev)
    bases = device_table("gemv_bases", bits, dev, slot_bases, torch.float32)
    _xprep_kernel[(nt, m)](x2, bases, xt, xb, xs, k, nt * bu, nt, x2.stride(0), BU=bu)
    return xt, xb, xs


def launch_affine(x2: torch.Tensor, w, bn: int, bu: int, split: int, num_warps: int, stages: int = 0,
                  out: Optional[torch.Tensor] = None) -> torch.Tensor:  # fmt: skip
    """y = x2 @ W^T for an affine :class:`LutWeight` through the fast GEMV (one program per row of x2)."""
    if w.kind != "affine":
        raise ValueError("the fast GEMV takes affine weights only")
    m, k = x2.shape
    n = w.out_features
    ku = lut_layout.num_units(k)
    dev = x2.device
    tiles = -(-ku // bu)
    split = max(1, min(split, tiles))
    ups = -(-tiles // split) * bu
    split = -(-ku // ups)
    if out is None:
        out = torch.empty(m, n, dtype=x2.dtype, device=dev)
    ws = out if split == 1 else torch.empty(split, m, n, dtype=torch.float32, device=dev)
    cnt = out if split == 1 else _counters(dev, m * triton.cdiv(n, bn))
    xt, xb, xs = prep_activations(x2, w.bits, bu)
    one_group = w.groups == 1 or w.group_size % (32 * bu) == 0
    grid = (triton.cdiv(n, bn), split, m)
    _gemv_affine_kernel[grid](
        xt, xb, xs, w.qweight, w.scales, w.biases, out, ws, cnt, n, ku, -(-ku // bu), w.groups, w.group_size, ups,
        split, 0x3F800000,
        BITS=w.bits, BN=bn, BU=bu, ONE_GROUP=one_group, EVEN=ku % bu == 0 and ups % bu == 0,
        FULL=n % lut_layout.ROW_BLOCK == 0 and ku % lut_layout.UNIT_TILE == 0,
        FIELDS=plan_fields(w.bits), STAGES=stages, num_warps=num_warps,
    )  # fmt: skip
    return out
