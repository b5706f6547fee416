"""ZO2-style block streaming: transformer blocks live in (pinned) host memory and visit the device one by one.

Generic over models: the blocks are the model's ModuleList of decoder layers (:func:`find_blocks`); the model's
own forward runs, and forward pre/post hooks (installed by :mod:`memtool.offload.zo`) call
:meth:`BlockStreamer.enter` / :meth:`BlockStreamer.exit` around each block.

Each block's parameters are packed into flat buffers, one per (dtype, trainable) group, with the parameters as
views, so a block crosses PCIe in one copy per group. On CUDA, three streams are ordered by events only:
block i+1 uploads on the upload stream while block i computes on the compute (current) stream and block i-1's
trainable groups are written back on the offload stream; frozen groups are never written back. On a CPU
"device" the same code runs with the streams and events as no-ops (an upload is a clone, a write-back a copy),
so the CPU tests exercise the scheduler. Blocks kept resident (``offload off``, or the ones ``auto`` can fit)
use the same flat layout on the device, so the arithmetic is the same in both modes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from memtool.errors import UsageError

BLOCK_PATHS = ("model.layers", "model.decoder.layers", "transformer.h", "gpt_neox.layers", "transformer.layers",
               "model.language_model.layers")


def _get(obj, path: str):
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The ModuleList of decoder blocks: model.layers (llama/mistral/qwen2), model.decoder.layers (opt),
    transformer.h (gpt2), ... UsageError if the model has none."""
    for path in BLOCK_PATHS:
        ml = _get(model, path)
        if isinstance(ml, nn.ModuleList) and len(ml) > 0:
            return path, ml
    raise UsageError(f"model {type(model).__name__} has no list of transformer blocks "
                     f"(looked for {', '.join(BLOCK_PATHS)}); block streaming needs one")


@dataclass
class _Group:
    dtype: torch.dtype
    trainable: bool
    params: list = field(default_factory=list)  # (param, offset, numel, shape)
    numel: int = 0
    host: torch.Tensor | None = None  # master (offloaded blocks)
    dev: torch.Tensor | None = None  # device copy (resident blocks: always; offloaded: while resident)

    def point(self, buf: torch.Tensor) -> None:
        for p, off, n, shape in self.params:
            p.data = buf[off: off + n].view(shape)


@dataclass
class _Block:
    index: int
    module: nn.Module
    groups: list[_Group]
    offloaded: bool
    state: str = "host"  # host | uploading | resident
    up_event: object = None
    down_event: object = None
    slot: int = -1

    @property
    def nbytes(self) -> int:
        return sum(g.numel * g.dtype.itemsize for g in self.groups)

    @property
    def trainable_nbytes(self) -> int:
        return sum(g.numel * g.dtype.itemsize for g in self.groups if g.trainable)


class BlockStreamer:
    """Owns the blocks' storage and moves offloaded blocks between host and device.

    Offloaded blocks visit a ring of ``N_SLOTS`` preallocated device slots (one flat buffer per group kind,
    sized for the largest block): with one block of lookahead, one slot computes, one uploads and one writes
    back, so device memory for streamed blocks is exactly three blocks, whatever the number of blocks.
    """

    N_SLOTS = 3

    def __init__(self, blocks: nn.ModuleList, device: torch.device, offloaded: list[bool], trainable_ids: set[int],
                 materialize=None):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        pin = torch.cuda.is_available()
        if self.cuda:
            self.compute = torch.cuda.current_stream(self.device)
            self.up = torch.cuda.Stream(self.device)
            self.down = torch.cuda.Stream(self.device)
        self.bytes_up = 0
        self.bytes_down = 0
        self.blocks: list[_Block] = []
        owner: dict[int, int] = {}
        for i, (mod, off) in enumerate(zip(blocks, offloaded)):
            groups: dict[tuple, _Group] = {}
            seen: set[int] = set()
            for name, p in mod.named_parameters():
                if id(p) in seen:
                    continue
                if id(p) in owner:
                    raise UsageError(f"parameter {name} of block {i} is shared with block {owner[id(p)]}; "
                                     "blocks that share weights cannot be streamed")
                owner[id(p)] = i
                seen.add(id(p))
                key = (p.dtype, id(p) in trainable_ids)
                g = groups.setdefault(key, _Group(dtype=p.dtype, trainable=key[1]))
                g.params.append((p, g.numel, p.numel(), tuple(p.shape)))
                g.numel += p.numel()
            blk = _Block(i, mod, list(groups.values()), bool(off))
            for g in blk.groups:
                where = "cpu" if blk.offloaded else self.device
                buf = torch.empty(g.numel, dtype=g.dtype, device=where, pin_memory=pin and blk.offloaded)
                for p, o, n, _ in g.params:
                    if getattr(p, "_zo_meta", None):
                        materialize(buf[o: o + n], p._zo_meta, p)
                        p._zo_meta = None
                    else:
                        buf[o: o + n].copy_(p.data.reshape(-1))
                if blk.offloaded:
                    g.host = buf
                else:
                    g.dev = buf
                g.point(buf)
            blk.state = "host" if blk.offloaded else "resident"
            for name, b in list(mod.named_buffers()):  # buffers (masks, ...) stay on the device
                if b.device != self.device:
                    _set_buffer(mod, name, b.to(self.device))
            self.blocks.append(blk)
        self._order = [b.index for b in self.blocks if b.offloaded]
        self._slots: list[dict] = []
        self._slot_free: list = [None] * self.N_SLOTS
        self._next_slot = 0

    # ---- scheduling -----------------------------------------------------------------------------------
    def _next_offloaded(self, i: int) -> int | None:
        if not self._order:
            return None
        for j in self._order:
            if j > i:
                return j
        return self._order[0]

    def _slot_buffers(self, slot: int) -> dict:
        if not self._slots:
            sizes: dict[tuple, int] = {}
            for b in self.blocks:
                if b.offloaded:
                    for g in b.groups:
                        k = (g.dtype, g.trainable)
                        sizes[k] = max(sizes.get(k, 0), g.numel)
            self._slots = [{k: torch.empty(n, dtype=k[0], device=self.device) for k, n in sizes.items()}
                           for _ in range(self.N_SLOTS)]
        return self._slots[slot]

    def prefetch(self, i: int) -> None:
        """Start uploading block i into the next of the N_SLOTS device slots (a ring: the slot's previous
        block, three uploads ago, has been written back, which the upload stream waits for on the device)."""
        blk = self.blocks[i]
        if not blk.offloaded or blk.state != "host":
            return
        slot = self._next_slot
        self._next_slot = (slot + 1) % self.N_SLOTS
        bufs = self._slot_buffers(slot)
        blk.slot = slot
        if self.cuda:
            if self._slot_free[slot] is not None:
                self.up.wait_event(self._slot_free[slot])  # the slot's previous block is written back
            if blk.down_event is not None:
                self.up.wait_event(blk.down_event)  # the host master holds this block's last write-back
            with torch.cuda.stream(self.up):
                for g in blk.groups:
                    g.dev = bufs[(g.dtype, g.trainable)][: g.numel]
                    g.dev.copy_(g.host, non_blocking=True)
                blk.up_event = torch.cuda.Event()
                blk.up_event.record(self.up)
        else:
            for g in blk.groups:
                g.dev = bufs[(g.dtype, g.trainable)][: g.numel]
                g.dev.copy_(g.host)
        self.bytes_up += blk.nbytes
        blk.state = "uploading"

    def enter(self, i: int, prefetch_next: bool = True) -> None:
        """Block i is about to compute: make it resident on the compute stream and start the next upload."""
        blk = self.blocks[i]
        if blk.offloaded:
            if blk.state == "host":
                self.prefetch(i)
            if blk.state == "uploading":
                if self.cuda:
                    self.compute.wait_event(blk.up_event)
                for g in blk.groups:
                    g.point(g.dev)
                blk.state = "resident"
        if prefetch_next:
            j = self._next_offloaded(i)
            if j is not None and j != i:
                self.prefetch(j)

    def exit(self, i: int, dirty: bool = True) -> None:
        """Block i has computed: write its trainable groups back (offload stream) if ``dirty`` (an update was
        applied during this residency; perturbations never touch the master) and release the device slot."""
        blk = self.blocks[i]
        if not blk.offloaded or blk.state != "resident":
            return
        write = dirty and blk.trainable_nbytes > 0
        if self.cuda:
            done = torch.cuda.Event()
            done.record(self.compute)
            if write:
                self.down.wait_event(done)
                with torch.cuda.stream(self.down):
                    for g in blk.groups:
                        if g.trainable:
                            g.host.copy_(g.dev, non_blocking=True)
                    blk.down_event = torch.cuda.Event()
                    blk.down_event.record(self.down)
                self._slot_free[blk.slot] = blk.down_event  # after the block's compute and its write-back
            else:
                self._slot_free[blk.slot] = done  # after the block's compute
        elif write:
            for g in blk.groups:
                if g.trainable:
                    g.host.copy_(g.dev)
        if write:
            self.bytes_down += blk.trainable_nbytes
        for g in blk.groups:
            g.point(g.host)
            g.dev = None
        blk.state = "host"

    def drop_prefetch(self) -> None:
        """Forget uploads in flight (before the host masters are replaced or read for saving)."""
        for blk in self.blocks:
            if blk.offloaded and blk.state == "uploading":
                for g in blk.groups:
                    g.dev = None
                blk.state = "host"

    def synchronize(self) -> None:
        if self.cuda:
            torch.cuda.current_stream(self.device).wait_stream(self.down)
            torch.cuda.current_stream(self.device).wait_stream(self.up)
            torch.cuda.synchronize(self.device)

    @property
    def n_offloaded(self) -> int:
        return len(self._order)


def _set_buffer(mod: nn.Module, name: str, value: torch.Tensor) -> None:
    *path, leaf = name.split(".")
    m = mod
    for p in path:
        m = getattr(m, p)
    m._buffers[leaf] = value


def block_nbytes(block: nn.Module) -> int:
    seen, n = set(), 0
    for p in block.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            n += p.numel() * p.element_size()
    return n


def plan_resident(blocks: nn.ModuleList, mode: str, device: torch.device, reserve_bytes: int = 0,
                  limit_bytes: int | None = None) -> list[bool]:
    """Which blocks are offloaded: ``on`` all, ``off`` none, ``auto`` as few as the device memory allows.

    ``auto`` keeps blocks resident while they fit in the free device memory (``torch.cuda.mem_get_info``, or
    ``limit_bytes`` when a cap such as ``--gpu-memory`` is lower) minus ``reserve_bytes`` (embeddings, head,
    activations) and the streaming slots and temporaries; on a CPU device it offloads all blocks so the
    scheduler is exercised.
    """
    n = len(blocks)
    if mode == "on":
        return [True] * n
    if mode == "off":
        return [False] * n
    if mode != "auto":
        raise UsageError(f"--offload must be auto, on or off (got {mode!r})")
    device = torch.device(device)
    if device.type != "cuda":
        return [True] * n
    free, _total = torch.cuda.mem_get_info(device)
    if limit_bytes is not None:
        free = min(free, limit_bytes - torch.cuda.memory_allocated(device))
    sizes = [block_nbytes(b) for b in blocks]
    if free - reserve_bytes - 2 * max(sizes) >= sum(sizes):  # everything fits, with perturbation temporaries
        return [False] * n
    budget = free - reserve_bytes - 5 * max(sizes)  # 3 streaming slots + perturbed copy + temporaries
    out = [True] * n
    for i, s in enumerate(sizes):
        if budget >= s:
            out[i] = False
            budget -= s
    return out


__all__ = ["find_blocks", "BlockStreamer", "plan_resident", "block_nbytes", "BLOCK_PATHS"]
