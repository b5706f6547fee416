"""Counter-based Gaussian perturbations for zeroth-order training.

A perturbation ``z`` of one parameter is a pure function of the key (seed, step, parameter key, perturbation
index) and of the element index: element ``j`` of ``z`` never depends on which other parameters were drawn
before, on module order, or on the device that draws it.

Bits: element pair ``i`` (elements 2i and 2i+1) hashes the counters 2i and 2i+1 with two rounds of the
"lowbias32" integer mixer (xor-shift / multiply by odd constants below 2**31), keyed by two 32-bit words of the
key. The torch implementation runs in int64 with every intermediate below 2**63 (no reliance on overflow
wrapping, no arithmetic right shift of negatives), so CPU and CUDA give identical integers; the Triton kernel
(CUDA, one fused kernel, used for speed) does the same arithmetic in uint32 and gives the same integers.
Gaussians: Box-Muller in float32 from 24-bit uniforms (u1 in (0, 1], u2 in [0, 1)). The integers are
device-independent; log/sqrt/cos/sin may differ by an ulp between CPU and CUDA math libraries, which is why
parity claims are "same device". Counters are 32-bit: a parameter of more than 2**32 elements would see its
stream repeat past that point.
"""

from __future__ import annotations

import hashlib
import math

import torch

M32 = 0xFFFFFFFF
_C1 = 0x21F0AAAD
_C2 = 0x735A2D97
_TWO_PI = 2.0 * math.pi
_CHUNK_PAIRS = 1 << 14  # eager path: cache-sized chunks below torch's parallel grain (no thread sync per op)


def param_key(name: str) -> int:
    """A stable 64-bit key of a parameter's name (independent of module order and of the parameter count)."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little")


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return x ^ (x >> 31)


def stream_key(seed: int, step: int, pkey: int, k: int = 0) -> tuple[int, int]:
    """Two 32-bit words that key the stream of (seed, step, parameter key, perturbation index)."""
    h = _splitmix64(seed & 0xFFFFFFFFFFFFFFFF)
    for v in (step, pkey, k):
        h = _splitmix64(h ^ (v & 0xFFFFFFFFFFFFFFFF))
    return h & M32, (h >> 32) & M32


def _mix(x: torch.Tensor) -> torch.Tensor:
    # lowbias32 on uint32 values held in int64: all products < 2**63
    x = x ^ (x >> 16)
    x = (x * _C1) & M32
    x = x ^ (x >> 15)
    x = (x * _C2) & M32
    return x ^ (x >> 15)


def hash_bits(counter: torch.Tensor, k1: int, k2: int) -> torch.Tensor:
    """32-bit hash of int64 counters (< 2**32) under key (k1, k2); returns int64 in [0, 2**32)."""
    return _mix(_mix(counter ^ k1) ^ k2)


def _pairs_torch(start: int, n_pairs: int, k1: int, k2: int, device) -> torch.Tensor:
    i = torch.arange(start, start + n_pairs, dtype=torch.int64, device=device)
    c = (2 * i) & M32  # 32-bit counters, as in the Triton kernel
    a = hash_bits(c, k1, k2)
    b = hash_bits(c + 1, k1, k2)
    u1 = ((a >> 8) + 1).to(torch.float32) * (2.0 ** -24)
    u2 = (b >> 8).to(torch.float32) * (2.0 ** -24)
    r = torch.sqrt(-2.0 * torch.log(u1))
    t = _TWO_PI * u2
    return torch.stack((r * torch.cos(t), r * torch.sin(t)), dim=-1).reshape(-1)


def gaussian_torch(n: int, k1: int, k2: int, device="cpu", start: int = 0) -> torch.Tensor:
    """Elements [start, start + n) (start even) of stream (k1, k2): float32 normals, pure torch ops."""
    if start % 2:
        raise ValueError("start must be even")
    p0 = start // 2
    n_pairs = (n + 1) // 2
    if n_pairs <= _CHUNK_PAIRS:
        return _pairs_torch(p0, n_pairs, k1, k2, device)[:n]
    out = torch.empty(2 * n_pairs, dtype=torch.float32, device=device)
    # On a CPU the chunks are small elementwise chains: one thread runs them 20x faster than a pool that
    # synchronizes on every op (and far faster still on an oversubscribed machine). Restored afterwards.
    threads = torch.get_num_threads()
    single = torch.device(device).type == "cpu" and threads > 1
    if single:
        torch.set_num_threads(1)
    try:
        for s in range(0, n_pairs, _CHUNK_PAIRS):
            m = min(_CHUNK_PAIRS, n_pairs - s)
            out[2 * s: 2 * (s + m)] = _pairs_torch(p0 + s, m, k1, k2, device)
    finally:
        if single:
            torch.set_num_threads(threads)
    return out[:n]


try:  # the fused CUDA kernel; the names must be module globals for Triton's JIT
    import triton
    import triton.language as tl

    @triton.jit
    def _mix32(x):
        x = x ^ (x >> 16)
        x = x * 0x21F0AAAD
        x = x ^ (x >> 15)
        x = x * 0x735A2D97
        return x ^ (x >> 15)

    @triton.jit(do_not_specialize=["n", "p0", "k1", "k2"])
    def _gauss_kernel(out_ptr, n, p0, k1, k2, BLOCK: tl.constexpr):
        pid = tl.program_id(0)
        i = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)  # pair index within this call
        c = (2 * (i + p0)).to(tl.uint32)
        a = _mix32(_mix32(c ^ k1.to(tl.uint32)) ^ k2.to(tl.uint32))
        b = _mix32(_mix32((c + 1) ^ k1.to(tl.uint32)) ^ k2.to(tl.uint32))
        u1 = ((a >> 8) + 1).to(tl.float32) * (1.0 / 16777216.0)
        u2 = (b >> 8).to(tl.float32) * (1.0 / 16777216.0)
        r = tl.sqrt(-2.0 * tl.log(u1))
        t = 6.283185307179586 * u2
        j = 2 * i
        tl.store(out_ptr + j, r * tl.cos(t), mask=j < n)
        tl.store(out_ptr + j + 1, r * tl.sin(t), mask=j + 1 < n)

    _HAVE_TRITON = True
except Exception:  # noqa: BLE001 - no Triton: the torch path serves every device
    _HAVE_TRITON = False


def gaussian_triton(n: int, k1: int, k2: int, device, start: int = 0) -> torch.Tensor:
    """Same stream as :func:`gaussian_torch` (identical hash bits), one fused Triton kernel."""
    if start % 2:
        raise ValueError("start must be even")
    out = torch.empty(n, dtype=torch.float32, device=device)
    if n == 0:
        return out
    block = 1024
    grid = (triton_cdiv((n + 1) // 2, block),)
    # keys as int32 bit patterns: one compiled variant whatever their values
    _gauss_kernel[grid](out, n, start // 2, _i32(k1), _i32(k2), BLOCK=block)
    return out


def _i32(k: int) -> int:
    return k - (1 << 32) if k >= (1 << 31) else k


def triton_cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


def _use_triton(device: torch.device) -> bool:
    return device.type == "cuda" and _HAVE_TRITON


def gaussian(n: int, seed: int, step: int, pkey: int, k: int = 0, device="cpu", backend: str = "auto",
             start: int = 0):
    """z for one parameter (flat float32) keyed by (seed, step, parameter key, perturbation k): its elements
    [start, start + n) (start even), so a large parameter can be drawn in pieces."""
    device = torch.device(device)
    k1, k2 = stream_key(seed, step, pkey, k)
    if backend == "triton" or (backend == "auto" and _use_triton(device)):
        return gaussian_triton(n, k1, k2, device, start)
    return gaussian_torch(n, k1, k2, device, start)


__all__ = ["param_key", "stream_key", "gaussian", "gaussian_torch", "gaussian_triton", "hash_bits"]
