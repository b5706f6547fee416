"""MeZO / SPSA zeroth-order steps, scheduled as ZO2 does: both perturbed forwards per block residency.

One step t with learning rate lr_t, n perturbations z_k (from :mod:`memtool.offload.rng`, never stored)::

    loss+_k = L(theta + eps z_k),  loss-_k = L(theta - eps z_k),  g_k = (loss+_k - loss-_k) / (2 eps)
    theta  <- theta - lr_t * (mean_k g_k z_k + wd * theta)      (wd only on matrices that are not norms)

Order of computation. The + and - copies of every perturbation (and every micro-batch of gradient
accumulation) travel through the model as one batch of ``2 n A B`` rows, in chunks of B rows. Forward hooks on
each unit that owns trainable parameters (the blocks, the embeddings, the final norm, ...) split the unit's
inputs into the chunks and run the unit's own forward once per chunk, with the parameters swapped for the
perturbed copy ``theta + s eps z_k`` of that chunk (a fresh tensor: theta itself is never modified by a
perturbation, so restoring is exact). The head's loss is computed per chunk the same way. So every unit is
resident once per step, and the previous step's update (its projected gradients with ITS learning rate) is
applied in place when a unit first becomes resident, before it is perturbed. :meth:`ZOTrainer.flush` applies a
pending update everywhere (before evaluation and checkpoints). Offloaded and resident blocks run exactly the
same operations on the same flat layout, so their losses and projected gradients are bit-identical.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from memtool.errors import UsageError
from memtool.offload import rng
from memtool.offload.streaming import BlockStreamer, find_blocks, plan_resident

SCHEDULES = ("constant", "linear", "cosine")
Z_CHUNK = 1 << 24  # elements of z drawn at once (64 MB of float32): bounds temporaries for embeddings / heads


@dataclass
class ZOConfig:
    lr: float = 1e-6
    eps: float = 1e-3
    n_perturb: int = 1
    weight_decay: float = 0.0
    schedule: str = "constant"
    warmup_steps: int = 0
    total_steps: int = 1
    min_lr_ratio: float = 0.0
    grad_accum: int = 1
    trainable: list[str] = field(default_factory=list)
    seed: int = 0

    def validate(self) -> None:
        if not (self.eps > 0 and math.isfinite(self.eps)):
            raise UsageError(f"--eps must be > 0 (got {self.eps})")
        if not (self.lr >= 0 and math.isfinite(self.lr)):
            raise UsageError(f"--lr must be >= 0 (got {self.lr})")
        if self.n_perturb < 1:
            raise UsageError(f"--n-perturb must be >= 1 (got {self.n_perturb})")
        if self.grad_accum < 1:
            raise UsageError(f"--grad-accum must be >= 1 (got {self.grad_accum})")
        if self.weight_decay < 0:
            raise UsageError(f"--weight-decay must be >= 0 (got {self.weight_decay})")
        if self.schedule not in SCHEDULES:
            raise UsageError(f"--schedule must be one of {', '.join(SCHEDULES)} (got {self.schedule!r})")
        if self.warmup_steps < 0:
            raise UsageError("--warmup must be >= 0")

    def to_json(self) -> dict:
        return asdict(self)


def lr_at(cfg: ZOConfig, step: int) -> float:
    """Learning rate of step ``step`` (1-based): linear warmup, then constant / linear / cosine decay."""
    if cfg.warmup_steps and step <= cfg.warmup_steps:
        return cfg.lr * step / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    span = max(1, cfg.total_steps - cfg.warmup_steps)
    frac = min(1.0, max(0.0, (step - cfg.warmup_steps) / span))
    lo = cfg.lr * cfg.min_lr_ratio
    if cfg.schedule == "linear":
        return lo + (cfg.lr - lo) * (1.0 - frac)
    return lo + (cfg.lr - lo) * 0.5 * (1.0 + math.cos(math.pi * frac))


def _matches(name: str, pattern: str) -> bool:
    if any(c in pattern for c in "*?["):
        return fnmatch.fnmatchcase(name, pattern)
    return pattern in name


def select_trainable(model: nn.Module, patterns: list[str] | None) -> list[tuple[str, nn.Parameter]]:
    """Trainable parameters (deduplicated, tied weights once): all, or those whose name matches a pattern
    (a glob, or a substring when it has no wildcard: ``norm``, ``lora_``, ``*.self_attn.q_proj.weight``)."""
    pats = [p.strip() for pat in (patterns or []) for p in pat.split(",") if p.strip()]
    out = [(n, p) for n, p in model.named_parameters() if not pats or any(_matches(n, q) for q in pats)]
    if not out:
        raise UsageError(f"--trainable {','.join(pats)} matches no parameter of the model")
    return out


def decays(name: str, p: torch.Tensor) -> bool:
    """Weight decay applies to matrices, not to norms and biases."""
    low = name.lower()
    return p.ndim >= 2 and "norm" not in low and not low.endswith(".bias") and "ln_" not in low


@dataclass
class _Entry:
    name: str
    param: nn.Parameter
    key: int
    decay: bool
    theta: torch.Tensor | None = None


@dataclass
class _Unit:
    name: str
    module: nn.Module
    entries: list[_Entry]
    block: int | None = None
    cur: tuple | None = None
    zcache: dict = field(default_factory=dict)
    dirty: bool = False  # an update was applied during the current residency


@dataclass
class _Ctx:
    chunks: list[tuple[int, int]]  # (perturbation k, sign) per chunk of B rows
    rows: int
    stash: dict = field(default_factory=dict)


def _split(obj, rows: int, n: int, found: list):
    if torch.is_tensor(obj):
        if obj.ndim >= 2 and obj.shape[0] == rows:
            found.append(True)
            return list(obj.chunk(n, dim=0))
        return [obj] * n
    if isinstance(obj, (tuple, list)):
        parts = [_split(o, rows, n, found) for o in obj]
        return [type(obj)(p[c] for p in parts) for c in range(n)]
    if isinstance(obj, dict):
        parts = {k: _split(v, rows, n, found) for k, v in obj.items()}
        return [{k: v[c] for k, v in parts.items()} for c in range(n)]
    return [obj] * n


def _cat(outs: list):
    o = outs[0]
    if torch.is_tensor(o):
        return torch.cat(outs, dim=0) if o.ndim >= 1 else o
    if isinstance(o, tuple) and not hasattr(o, "_fields"):
        return tuple(_cat([x[i] for x in outs]) for i in range(len(o)))
    if isinstance(o, list):
        return [_cat([x[i] for x in outs]) for i in range(len(o))]
    if isinstance(o, dict):
        vals = {k: _cat([x[k] for x in outs]) for k in o.keys()}
        try:
            return type(o)(**vals)
        except TypeError:
            return vals
    return o


class ZOTrainer:
    """Zeroth-order training state of one model: units, hooks, the block streamer and the pending update."""

    def __init__(self, model: nn.Module, cfg: ZOConfig, device="cpu", offload: str | list[bool] = "off",
                 reserve_bytes: int = 0, materialize=None, cache_z: bool | None = None,
                 limit_bytes: int | None = None):
        cfg.validate()
        self.model, self.cfg = model, cfg
        self.device = torch.device(device)
        self.cache_z = (self.device.type == "cpu") if cache_z is None else cache_z
        self.blocks_path, blocks = find_blocks(model)
        self.base = model.base_model
        self.head = model.get_output_embeddings()
        if self.head is None:
            raise UsageError(f"model {type(model).__name__} has no output embeddings (language-model head)")
        quant = getattr(getattr(model, "config", None), "quantization_config", None)
        if quant is not None:
            qm = quant.get("quant_method") if isinstance(quant, dict) else getattr(quant, "quant_method", None)
            raise UsageError(f"fine-tuning a quantized base (quant_method {qm!r}) is not supported yet")

        _replace_meta(model, materialize)
        trainable = select_trainable(model, cfg.trainable)
        self.trainable_names = [n for n, _ in trainable]
        key_of = {id(p): (n, rng.param_key(n)) for n, p in trainable}
        self.n_trainable = sum(p.numel() for _, p in trainable)

        offloaded = offload if isinstance(offload, list) else plan_resident(blocks, offload, self.device,
                                                                              reserve_bytes, limit_bytes)
        block_ids = {id(m) for b in blocks for m in b.modules()}
        # everything outside the blocks lives on the device
        for mod in model.modules():
            if id(mod) in block_ids:
                continue
            for pname, p in mod._parameters.items():
                if p is not None and not p.is_contiguous() and not getattr(p, "_zo_meta", None):
                    p.data = p.data.contiguous()
                if p is not None and (p.device != self.device or getattr(p, "_zo_meta", None)):
                    if getattr(p, "_zo_meta", None):
                        buf = torch.empty(p.shape, dtype=p.dtype, device=self.device)
                        materialize(buf.view(-1), p._zo_meta, p)
                        p.data = buf
                        p._zo_meta = None
                    else:
                        p.data = p.data.to(self.device)
            for bname, b in mod._buffers.items():
                if b is not None and b.device != self.device:
                    mod._buffers[bname] = b.to(self.device)
        self.streamer = BlockStreamer(blocks, self.device, offloaded, set(key_of), materialize=materialize)

        def entries_of(mod: nn.Module, recurse: bool) -> list[_Entry]:
            out, seen = [], set()
            params = mod.named_parameters() if recurse else mod._parameters.items()
            for _, p in params:
                if p is None or id(p) not in key_of or id(p) in seen:
                    continue
                seen.add(id(p))
                n, k = key_of[id(p)]
                out.append(_Entry(n, p, k, decays(n, p)))
            return out

        self.units: list[_Unit] = []
        covered: set[int] = set()
        hooked: list[_Unit] = []
        # non-block owners of trainable parameters, in model order (embeddings, final norm, ...), except the head
        for mname, mod in model.named_modules():
            if id(mod) in block_ids or mod is self.head:
                continue
            ents = entries_of(mod, recurse=False)
            if not ents:
                continue
            if any(id(m) in block_ids for m in mod.modules()):
                raise UsageError(f"module {mname} owns trainable parameters and contains the blocks; "
                                 "cannot perturb it per copy")
            hooked.append(_Unit(mname, mod, ents))
        for i, b in enumerate(blocks):
            hooked.append(_Unit(f"{self.blocks_path}.{i}", b, entries_of(b, recurse=True), block=i))
        # forward order: embeddings (before the blocks), blocks, then the rest (final norm, ...)
        pre = [u for u in hooked if u.block is None and _is_embedding(u.module)]
        post = [u for u in hooked if u.block is None and not _is_embedding(u.module)]
        self.units = pre + [u for u in hooked if u.block is not None] + post
        self.head_unit = _Unit("lm_head", self.head, entries_of(self.head, recurse=True))
        for u in self.units + [self.head_unit]:
            covered |= {id(e.param) for e in u.entries}
        missing = [n for n, p in trainable if id(p) not in covered]
        if missing:
            raise UsageError(f"trainable parameters outside any unit: {', '.join(missing[:3])}")

        self._hooks = []
        for u in self.units:
            self._hooks.append(u.module.register_forward_pre_hook(self._make_pre(u), with_kwargs=True))
            self._hooks.append(u.module.register_forward_hook(self._make_post(u), with_kwargs=True))
        self.step = 0
        self.pending: tuple[int, float, list[float]] | None = None
        self._updated: set[int] = set()
        self._ctx: _Ctx | None = None
        self._broken = False

    # ---- perturbation and update ----------------------------------------------------------------------
    def _z(self, step: int, e: _Entry, k: int, n: int, start: int = 0, device=None) -> torch.Tensor:
        return rng.gaussian(n, self.cfg.seed, step, e.key, k, device=device or self.device, start=start)

    def _pieces(self, n: int):
        c = Z_CHUNK
        return [(s, min(c, n - s)) for s in range(0, n, c)]

    def _apply_pending(self, unit: _Unit) -> bool:
        """Apply the pending update to the unit's parameters not yet updated this step; True if any was."""
        if self.pending is None:
            return False
        changed = False
        step, lr, gs = self.pending
        wd, n = self.cfg.weight_decay, len(gs)
        for e in unit.entries:
            if id(e.param) in self._updated:
                continue
            self._updated.add(id(e.param))
            changed = True
            flat = e.param.data.view(-1)  # parameters are contiguous (flat-buffer views or plain tensors)
            for s0, m in self._pieces(flat.numel()):  # in pieces: temporaries stay small for huge matrices
                data = flat[s0: s0 + m]
                t = data if data.dtype == torch.float32 else data.float()
                if wd and e.decay:
                    t.mul_(1.0 - lr * wd)
                for k, g in enumerate(gs):
                    t.add_(self._z(step, e, k, m, s0, data.device), alpha=-lr * g / n)
                if t is not data:
                    data.copy_(t)
        return changed

    def _perturb(self, unit: _Unit, k: int, sign: int) -> None:
        if unit.cur == (k, sign):
            return
        alpha = sign * self.cfg.eps
        step = self.step + 1
        for i, e in enumerate(unit.entries):
            if e.theta is None:
                e.theta = e.param.data
            theta = e.theta.view(-1)
            if self.cache_z:  # CPU: draw z once per residency for both signs
                z = unit.zcache.get((k, i))
                if z is None:
                    unit.zcache = {kk: v for kk, v in unit.zcache.items() if kk[0] == k}
                    z = unit.zcache[(k, i)] = self._z(step, e, k, theta.numel(), 0, theta.device)
                pert = torch.add(theta, z, alpha=alpha).to(theta.dtype)
            else:  # in pieces: a fresh perturbed copy plus small temporaries
                pert = torch.empty_like(theta)
                for s0, m in self._pieces(theta.numel()):
                    z = self._z(step, e, k, m, s0, theta.device)
                    pert[s0: s0 + m].copy_(torch.add(theta[s0: s0 + m], z, alpha=alpha))
            e.param.data = pert.view(e.theta.shape)
        unit.cur = (k, sign)

    def _restore(self, unit: _Unit) -> None:
        for e in unit.entries:
            if e.theta is not None:
                e.param.data = e.theta
                e.theta = None
        unit.cur = None
        unit.zcache = {}

    # ---- hooks ----------------------------------------------------------------------------------------
    def _make_pre(self, unit: _Unit):
        def pre(module, args, kwargs):
            if unit.block is not None:
                self.streamer.enter(unit.block)
            ctx = self._ctx
            if ctx is None or not unit.entries:
                return None
            unit.dirty = self._apply_pending(unit)
            found: list = []
            parts = _split((args, kwargs), ctx.rows, len(ctx.chunks), found)
            if not found:
                raise UsageError(f"{unit.name} gets no batch-shaped input; cannot perturb it per copy "
                                 "(train it frozen with --trainable)")
            ctx.stash[id(module)] = parts[1:]
            self._perturb(unit, *ctx.chunks[0])
            return parts[0]
        return pre

    def _make_post(self, unit: _Unit):
        def post(module, args, kwargs, output):
            ctx = self._ctx
            if ctx is not None and unit.entries:
                outs = [output]
                for c, (a, kw) in enumerate(ctx.stash.pop(id(module)), start=1):
                    self._perturb(unit, *ctx.chunks[c])
                    outs.append(module.forward(*a, **kw))
                self._restore(unit)
                output = _cat(outs)
            if unit.block is not None:
                self.streamer.exit(unit.block, dirty=unit.dirty)
            unit.dirty = False
            return output
        return post

    # ---- steps ----------------------------------------------------------------------------------------
    def _positions(self, rows: int, seq: int) -> torch.Tensor:
        return torch.arange(seq, device=self.device).unsqueeze(0).expand(rows, seq)

    def _hidden(self, ids: torch.Tensor) -> torch.Tensor:
        out = self.base(input_ids=ids, position_ids=self._positions(*ids.shape), use_cache=False)
        return out[0] if isinstance(out, (tuple, list)) else out.last_hidden_state

    def _loss_sum(self, h: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.head(h[:, :-1]).float()
        tgt = labels[:, 1:]
        s = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1), ignore_index=-100,
                            reduction="sum")
        return s, (tgt != -100).sum()

    @torch.no_grad()
    def train_step(self, ids: torch.Tensor, labels: torch.Tensor) -> dict:
        """One ZO step on ``grad_accum`` micro-batches (rows of ``ids`` split evenly); returns the step's stats."""
        cfg = self.cfg
        step = self.step + 1
        lr = lr_at(cfg, step)
        n, A = cfg.n_perturb, cfg.grad_accum
        if ids.shape[0] % A:
            raise UsageError(f"batch of {ids.shape[0]} rows does not split into {A} micro-batches")
        B = ids.shape[0] // A
        ids = ids.to(self.device)
        labels = labels.to(self.device)
        chunks = [(k, s) for k in range(n) for s in (1, -1) for _ in range(A)]
        rows = len(chunks) * B
        if self._broken:
            raise RuntimeError("a previous step failed midway; the weights may hold part of an update")
        self._updated = set()
        self._ctx = _Ctx(chunks, rows)
        ok = False
        try:
            h = self._hidden(ids.repeat(2 * n, 1))
            self._apply_pending(self.head_unit)
            sums, counts = [], []
            for c, (k, s) in enumerate(chunks):
                if self.head_unit.entries:
                    self._perturb(self.head_unit, k, s)
                a = c % A
                ls, cnt = self._loss_sum(h[c * B:(c + 1) * B], labels[a * B:(a + 1) * B])
                sums.append(ls)
                counts.append(cnt)
            self._restore(self.head_unit)
            ok = True
        finally:
            self._ctx = None
            if not ok:  # leave no perturbed copy in place; a half-applied update cannot be undone
                for u in self.units + [self.head_unit]:
                    self._restore(u)
                self._broken = self.pending is not None and bool(self._updated)
        vals = torch.stack([torch.stack(sums).double(), torch.stack(counts).double()]).cpu().tolist()
        if self.pending is not None and len(self._updated) < len(self._all_params()):
            raise RuntimeError("pending update not applied to every trainable parameter")
        losses = []
        for k in range(n):
            lk = []
            for si in range(2):
                sl = slice((2 * k + si) * A, (2 * k + si + 1) * A)
                tot = sum(vals[1][sl])
                if tot == 0:
                    raise UsageError("a batch has no target tokens (all labels masked)")
                lk.append(sum(vals[0][sl]) / tot)
            losses.append(lk)
        gs = [(lp - lm) / (2.0 * cfg.eps) for lp, lm in losses]
        self.pending = (step, lr, gs)
        self.step = step
        loss = sum(lp + lm for lp, lm in losses) / (2 * n)
        return {"step": step, "loss": loss, "loss_plus": losses[0][0], "loss_minus": losses[0][1],
                "proj_grad": gs, "lr": lr, "tokens": int(sum(vals[1][:A]))}

    def _all_params(self) -> set[int]:
        if not hasattr(self, "_all_ids"):
            self._all_ids = {id(e.param) for u in self.units + [self.head_unit] for e in u.entries}
        return self._all_ids

    @torch.no_grad()
    def flush(self) -> None:
        """Apply a pending update to every trainable parameter (before evaluation, saving or reading weights)."""
        if self.pending is not None:
            self._updated = set()
            for u in self.units + [self.head_unit]:
                if u.block is not None:
                    self.streamer.enter(u.block)
                changed = self._apply_pending(u)
                if u.block is not None:
                    self.streamer.exit(u.block, dirty=changed)
            self.pending = None
            self._updated = set()
        self.streamer.drop_prefetch()
        self.streamer.synchronize()  # host masters are final (write-backs done) when flush returns

    @torch.no_grad()
    def evaluate(self, batches) -> float:
        """Mean token loss of unperturbed weights over ``(ids, labels)`` batches (flushes first)."""
        self.flush()
        tot, cnt = 0.0, 0
        for ids, labels in batches:
            h = self._hidden(ids.to(self.device))
            s, c = self._loss_sum(h, labels.to(self.device))
            tot += float(s)
            cnt += int(c)
        self.streamer.drop_prefetch()
        return tot / max(cnt, 1)

    def pending_json(self) -> dict | None:
        if self.pending is None:
            return None
        step, lr, gs = self.pending
        return {"step": step, "lr": lr, "proj_grad": gs}

    def close(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []


def _replace_meta(model: nn.Module, materialize) -> None:
    """Parameters on the meta device become zero-storage placeholders of the right shape (tagged with their
    name), filled by ``materialize(flat_buffer, name, param)`` where their storage is made (pinned host memory
    for streamed blocks, the device otherwise): a model larger than memory is never materialized twice."""
    names = {id(p): n for n, p in model.named_parameters()}
    if not any(p.device.type == "meta" for p in model.parameters()):
        return
    if materialize is None:
        raise UsageError("model weights are on the meta device and no initializer was given")
    new: dict[int, nn.Parameter] = {}
    for mod in model.modules():
        for pname, p in list(mod._parameters.items()):
            if p is None or p.device.type != "meta":
                continue
            if id(p) not in new:
                q = nn.Parameter(torch.empty(1, dtype=p.dtype).expand(p.shape), requires_grad=False)
                q._zo_meta = names.get(id(p), pname)
                new[id(p)] = q
            mod._parameters[pname] = new[id(p)]


def _is_embedding(mod: nn.Module) -> bool:
    return isinstance(mod, nn.Embedding) or "embed" in type(mod).__name__.lower()


__all__ = ["ZOConfig", "ZOTrainer", "lr_at", "select_trainable", "decays", "SCHEDULES"]
