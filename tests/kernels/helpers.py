"""Random LUT weights for the kernel tests (fresh random codes and parameters, never zeros)."""

import torch

from memtool.kernels import LutWeight


def rand_weight(kind, bits, n, k, g, seed=0, per_group_table=False):
    gen = torch.Generator().manual_seed(seed)
    G = 1 if (g is None or g <= 0 or g >= k) else -(-k // g)
    codes = torch.randint(0, 2**bits, (n, k), dtype=torch.uint8, generator=gen)
    r = lambda *s: torch.rand(*s, generator=gen)  # noqa: E731
    if kind == "affine":
        return LutWeight.from_codes(codes, kind, bits, g, scale=r(n, G) * 0.1 + 0.01, bias=(r(n, G) - 0.5) * 0.2)
    if kind == "bcq":
        return LutWeight.from_codes(codes, kind, bits, g, alpha=r(n, G, bits) * 0.1 + 0.001,
                                    offset=(r(n, G) - 0.5) * 0.1)
    shape = (n, G, 2**bits) if per_group_table else (2**bits,)
    table = torch.sort(torch.randn(*shape, generator=gen), dim=-1)[0]
    return LutWeight.from_codes(codes, kind, bits, g, scale=r(n, G) + 0.1, table=table)


def rel_err(y, ref):
    y = y.double()
    return ((y - ref).norm() / ref.norm()).item()
