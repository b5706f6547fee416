"""Calibrated rounding: GPTQ-style error feedback with the layer Hessian, for every LUT table type.

Given a linear layer's weight ``W [N, K]`` and ``H = sum_x x x^T`` over calibration inputs (``X^T X``; any positive
multiple gives the same result), columns are quantized one at a time; the rounding error of column j is spread
over the not-yet-quantized columns through the upper Cholesky factor of ``H^-1`` so that ``||X W^T - X Wq^T||``
stays small. Updates are applied lazily per block of ``block_size`` columns.

Groups stay g consecutive input channels (the storage format). A group's table is fitted when the sweep first
enters it, from the current, error-updated weights of all its columns (``static_groups=True``: fitted once from
the original weights before the sweep). Each column is then rounded to the nearest entry of its group's table.
``act_order`` sweeps columns by decreasing Hessian diagonal; the groups (and so the codes' layout) do not
change, so no ``g_idx`` is needed. The range (clip) search of a group's fit weights each column's squared error
by the Hessian diagonal (``clip_weighted``): a column whose input is large costs more to clip.

``refit`` (uniform tables): once all codes are fixed, each row's group parameters are re-solved by least squares
on the layer output error: with the codes c fixed, ``Wq`` is linear in the parameters (``w = s * c + b`` per group
for ``"affine"``, ``w = s * (c - zero)`` with the integer zero kept for ``"scale"``), so the parameters minimizing
``(w - wq) H (w - wq)^T`` of a row solve a small linear system (2G or G unknowns, all the row's groups jointly).
A row keeps its refit only if that error goes down. ``"affine"`` makes the zero points non-integer, which the
GPTQ checkpoint export (memtool.compress.gptq_export) refuses; ``"scale"`` keeps them exportable.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from memtool.compress.lut import LutConfig, LutQuantized, fit_group_params, params_to_lut, quantize_weight
from memtool.compress.lut_common import nearest_sorted, sort_lut
from memtool.errors import MemtoolError, UsageError


@dataclass(frozen=True)
class GptqConfig:
    """``damp``: fraction of the mean Hessian diagonal added to it; ``block_size``: lazy-update block width;
    ``clip_steps``: range-shrink search of the group fits (uniform, nf; see LutConfig), None = the LutConfig's.
    ``clip_weighted``: that search weights each column's squared error by the Hessian diagonal (its input's mean
    square). ``refit``: None, "scale" or "affine" (see the module docstring).
    The defaults (act_order, Hessian-weighted clip search, scale refit) gave the best perplexity on the default
    model (docs/bench/quality.md) and keep integer zero points (GPTQ-exportable).
    """

    damp: float = 0.01
    block_size: int = 128
    act_order: bool = True
    static_groups: bool = False
    clip_steps: int | None = 16
    refit: str | None = "scale"
    clip_weighted: bool = True

    def __post_init__(self):
        if not (0 <= self.damp < 1):
            raise UsageError(f"damp must be in [0, 1), got {self.damp!r}")
        if self.block_size < 1:
            raise UsageError(f"block size must be positive, got {self.block_size!r}")
        if self.refit not in (None, "scale", "affine"):
            raise UsageError(f"refit must be None, 'scale' or 'affine', got {self.refit!r}")


def _hinv_upper(H: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of (H + damp*mean(diag) I)^-1, raising the dampening until it factorizes."""
    mean_diag = H.diagonal().mean().clamp(min=1e-12)
    eye = torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
    d = damp
    for _ in range(6):
        try:
            L = torch.linalg.cholesky(H + d * mean_diag * eye)
            Hinv = torch.cholesky_inverse(L)
            return torch.linalg.cholesky(Hinv, upper=True)
        except torch._C._LinAlgError:
            d = max(10 * d, 1e-4)
    raise MemtoolError("the layer Hessian is not positive definite even with heavy dampening")


def refit_uniform(w: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, H: torch.Tensor,
                  group_size: int, mode: str = "affine") -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares uniform parameters for fixed ``codes [N, K]``: minimize ``(w - wq) H (w - wq)^T`` per row.

    ``mode="affine"``: ``wq = s * c + b`` per group (2G unknowns per row; returned as ``scale = s``,
    ``zero = -b / s``); ``"scale"``: ``wq = s * (c - zero)`` with ``zero`` kept (G unknowns). Solved in float64
    with a tiny ridge toward the given parameters; a row keeps its new parameters only if its error decreases and
    every scale stays positive. Returns ``(scale, zero) [N, G]`` in ``scale``'s dtype.
    """
    N, K = w.shape
    G = scale.shape[1]
    g = K if group_size == -1 else group_size
    f64 = torch.float64
    pad = G * g - K  # ragged last group: pad with zero columns (zero Hessian rows add nothing)
    Hp = torch.nn.functional.pad(H.to(f64), (0, pad, 0, pad)).reshape(G, g, G, g)
    wp = torch.nn.functional.pad(w.to(f64), (0, pad)).reshape(N, G, g)
    c = torch.nn.functional.pad(codes.to(f64), (0, pad)).reshape(N, G, g)
    s0, z0 = scale.to(f64), zero.to(f64)
    if mode == "affine":  # basis of each group's values: the codes and a constant
        real = torch.nn.functional.pad(torch.ones(K, dtype=f64, device=w.device), (0, pad)).reshape(G, g)
        B = torch.stack([c, real.expand(N, G, g)], -1)
        theta0 = torch.stack([s0, -s0 * z0], -1)
    else:
        B = (c - z0[..., None])[..., None]
        theta0 = s0[..., None]
    m = B.shape[-1]
    gram = torch.empty(N, G, m, G, m, dtype=f64, device=w.device)
    for k in range(G):  # gram[n, k, a, l, b] = sum_ij B[n,k,i,a] H[k,i,l,j] B[n,l,j,b]
        T = torch.einsum("nia,ilj->nalj", B[:, k], Hp[k])
        gram[:, k] = torch.einsum("nalj,nljb->nalb", T, B)
    rhs = torch.einsum("nkia,nki->nka", B, torch.einsum("nlj,ljki->nki", wp, Hp))
    P = G * m
    gram, rhs, theta0 = gram.reshape(N, P, P), rhs.reshape(N, P), theta0.reshape(N, P)
    # a tiny ridge toward the current parameters keeps degenerate groups (e.g. a single code used) where they are
    lam = 1e-8 * gram.diagonal(dim1=1, dim2=2).mean(-1).clamp(min=1e-30)[:, None]
    eye = torch.eye(P, dtype=f64, device=w.device)
    theta = torch.linalg.solve(gram + lam[..., None] * eye, rhs + lam * theta0)

    def err(t):  # (w - wq) H (w - wq)^T up to the constant w H w^T
        return (t * (gram @ t[..., None])[..., 0]).sum(-1) - 2 * (t * rhs).sum(-1)

    theta, theta0 = theta.reshape(N, G, m), theta0.reshape(N, G, m)
    ok = err(theta.reshape(N, P)) < err(theta0.reshape(N, P))
    ok &= (theta[..., 0] > 0).all(-1) & theta.reshape(N, P).isfinite().all(-1)
    s = torch.where(ok[:, None], theta[..., 0], s0)
    z = torch.where(ok[:, None], -theta[..., 1] / theta[..., 0], z0) if mode == "affine" else z0
    return s.to(scale.dtype), z.to(scale.dtype)


def gptq_quantize(w: torch.Tensor, H: torch.Tensor, cfg: LutConfig, gcfg: GptqConfig | None = None,
                  compute_dtype: torch.dtype = torch.float32) -> LutQuantized:
    """Quantize ``w [N, K]`` with error feedback through ``H [K, K]``; returns the codes and fitted tables."""
    gcfg = gcfg or GptqConfig()
    if gcfg.clip_steps is not None and cfg.method != "bcq":
        cfg = replace(cfg, clip_steps=gcfg.clip_steps)
    N, K = w.shape
    if H.shape != (K, K):
        raise UsageError(f"Hessian shape {tuple(H.shape)} does not match weight in-features {K}")
    dev = w.device
    W = w.to(compute_dtype).clone()
    H = H.to(device=dev, dtype=compute_dtype).clone()
    dead = H.diagonal() == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    W0, H0 = W.clone(), H.clone()

    g = K if cfg.group_size == -1 else cfg.group_size
    G = -(-K // g)
    group_of = torch.arange(K, device=dev) // g
    perm = torch.argsort(H.diagonal(), descending=True) if gcfg.act_order else torch.arange(K, device=dev)
    W, H = W[:, perm], H[perm][:, perm]
    gperm = group_of[perm].tolist()
    pos_of = torch.empty(K, dtype=torch.long, device=dev)
    pos_of[perm] = torch.arange(K, device=dev)  # position in the sweep of each original column
    U = _hinv_upper(H, gcfg.damp)

    luts: list[torch.Tensor | None] = [None] * G
    params: list[dict | None] = [None] * G

    def fit(k: int, cur: torch.Tensor) -> None:
        d = H0.diagonal()[k * g:(k + 1) * g] if gcfg.clip_weighted else None
        p, _ = fit_group_params(cur[:, None, :], None, cfg, weight=d)
        params[k] = p
        luts[k] = sort_lut(params_to_lut(cfg.method, p, cfg.bits)[:, 0])  # [N, L] sorted, codes, midpoints

    if gcfg.static_groups:
        w0 = w.to(compute_dtype)
        for k in range(G):
            fit(k, w0[:, k * g:(k + 1) * g])

    codes = torch.empty(N, K, dtype=torch.long, device=dev)  # in sweep order
    B = gcfg.block_size
    for i1 in range(0, K, B):
        i2 = min(i1 + B, K)
        W1 = W[:, i1:i2].clone()
        E1 = torch.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        for i in range(i2 - i1):
            k = gperm[i1 + i]
            if luts[k] is None:  # first column of group k in the sweep: fit from the current weights
                pos = pos_of[k * g:min((k + 1) * g, K)]
                cur = torch.empty(N, len(pos), dtype=W.dtype, device=dev)
                inblk = pos < i2
                cur[:, inblk] = W1[:, pos[inblk] - i1]
                later = pos[~inblk]
                if len(later):  # pending updates of this block, not yet applied to W
                    cur[:, ~inblk] = W[:, later] - E1[:, :i] @ U[i1:i1 + i, later]
                fit(k, cur)
            col = W1[:, i]
            c, q = nearest_sorted(col[:, None], *luts[k])
            c, q = c[:, 0], q[:, 0]
            codes[:, i1 + i] = c
            err = (col - q) / U1[i, i]
            W1[:, i:] -= err[:, None] * U1[i, i:][None, :]
            E1[:, i] = err
        W[:, i2:] -= E1 @ U[i1:i2, i2:]

    codes = codes[:, pos_of]  # back to the original column order
    out = {}
    for name in params[0]:
        if name == "table":
            out[name] = params[0][name]
        else:
            out[name] = torch.cat([p[name] for p in params], dim=1)
    if gcfg.refit is not None and cfg.method == "uniform":
        H0 += gcfg.damp * H0.diagonal().mean() * torch.eye(K, dtype=H0.dtype, device=dev)
        out["scale"], out["zero"] = refit_uniform(W0, codes, out["scale"], out["zero"], H0, cfg.group_size,
                                                  gcfg.refit)
    return LutQuantized(codes.to(torch.uint8).contiguous(), cfg.bits, cfg.group_size, cfg.method, **out)


def output_error(w: torch.Tensor, wq: torch.Tensor, H: torch.Tensor) -> float:
    """``||X W^T - X Wq^T||_F^2`` computed from ``H = X^T X``: trace(D H D^T) with D = W - Wq."""
    D = (w - wq).to(H.dtype)
    return float(((D @ H) * D).sum())


def awq_search(ws: list[torch.Tensor], H: torch.Tensor, cfg: LutConfig, grid: int = 20):
    """Activation-aware per-input-channel scales for weights ``ws`` that share one input (Hessian ``H``).

    Tries s = rms(x)^a (rms from diag(H), normalised to geometric mean 1) for a = 0, 1/grid, ..., and keeps the
    one with the smallest output error sum ||X W^T - X (Q(W diag(s)) diag(1/s))^T||^2 under round-to-nearest.
    Returns ``(s [K], a)``; a = 0 gives s = 1. The caller multiplies the weights' columns by s and divides the
    producer of their input (a norm's weight, or the rows of the previous linear) by s.
    """
    H = H.to(torch.float32)
    act = H.diagonal().clamp(min=1e-12).sqrt()
    search = replace(cfg, bcq_iters=min(cfg.bcq_iters, 2))
    best_s, best_a, best_e = torch.ones_like(act), 0.0, None
    for j in range(grid):
        a = j / grid
        sc = act**a
        sc = sc / (sc.max() * sc.min()).sqrt()
        e = sum(output_error(w.float(), quantize_weight(w.float() * sc, search).dequantize() / sc, H) for w in ws)
        if best_e is None or e < best_e:
            best_s, best_a, best_e = sc, a, e
    return best_s, best_a


# (scale producer, consumers) pairs of Llama-style blocks (Llama, Mistral, Qwen2, SmolLM, ...)
AWQ_PAIRS = (("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
             ("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj")),
             ("mlp.up_proj", ("mlp.down_proj",)))


def _apply_awq(block, hess: dict, cfg: LutConfig, skipped) -> int:
    """Fold activation-aware scales into a Llama-style block in place; updates ``hess``. Returns pairs folded."""
    done = 0
    for prod_name, cons in AWQ_PAIRS:
        try:
            prod = block.get_submodule(prod_name)
            mods = [block.get_submodule(c) for c in cons]
        except AttributeError:
            continue
        if any(c not in hess or skipped(c) or not isinstance(m, torch.nn.Linear) for c, m in zip(cons, mods)):
            continue
        sc, a = awq_search([m.weight.data for m in mods], hess[cons[0]], cfg)
        if a == 0:
            continue
        sc = sc.to(prod.weight.device)
        if isinstance(prod, torch.nn.Linear):  # scale the producer's output rows
            prod.weight.data.div_(sc[:, None].to(prod.weight.dtype))
        else:  # a norm: elementwise weight (and bias)
            prod.weight.data.div_(sc.to(prod.weight.dtype))
        if getattr(prod, "bias", None) is not None:
            prod.bias.data.div_(sc.to(prod.bias.dtype))
        for c, m in zip(cons, mods):
            m.weight.data.mul_(sc[None, :].to(m.weight.dtype))
            sh = sc.to(hess[c].device, hess[c].dtype)
            hess[c] = hess[c] / sh[:, None] / sh[None, :]
        done += 1
    return done


def gptq_model(model, calib_ids: torch.Tensor, cfg: LutConfig, gcfg: GptqConfig | None = None, device="cpu",
               skip: tuple[str, ...] = (), progress=None, batch_size: int = 8, awq: bool = False,
               ) -> dict[str, LutQuantized]:
    """Sequential GPTQ over the linear layers of every decoder block (embeddings and lm_head untouched).

    Block i is quantized from its calibration inputs, its weights are replaced in place by their dequantized
    values, and block i+1's inputs are computed with the quantized block. ``skip``: fnmatch patterns of full
    module names left in 16-bit. ``awq``: first fold activation-aware scales into Llama-style blocks (this also
    changes their norm weights and up_proj rows in the model: save those from the model, not from the source).
    Returns ``{full_module_name: LutQuantized}`` (on the CPU; weights [out, in]).
    """
    from fnmatch import fnmatch

    from memtool.compress.calibrate import block_linears, collect_hessians_blockwise, find_blocks

    prefix, blocks = find_blocks(model)
    out: dict[str, LutQuantized] = {}
    for i, hess in collect_hessians_blockwise(model, calib_ids, device, progress, batch_size):
        def skipped(name):
            return any(fnmatch(f"{prefix}.{i}.{name}", p) for p in skip)

        if awq:
            _apply_awq(blocks[i], hess, cfg, skipped)
        for name, mod in block_linears(blocks[i]).items():
            full = f"{prefix}.{i}.{name}"
            if name not in hess or skipped(name):
                continue
            conv = type(mod).__name__ == "Conv1D"
            w = mod.weight.data.T if conv else mod.weight.data
            q = gptq_quantize(w, hess[name], cfg, gcfg)
            deq = q.dequantize(mod.weight.dtype)
            mod.weight.data.copy_(deq.T if conv else deq)
            out[full] = LutQuantized(**{**q.__dict__, **{k: v.cpu() for k, v in q.__dict__.items()
                                                         if torch.is_tensor(v)}})
    return out
