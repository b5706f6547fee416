"""Training data for ``memtool finetune``: token windows with labels, a held-out split, deterministic batches.

Sources:
- a text file (``.txt`` or anything not ``.jsonl``/``.json``): tokenized once, cut into ``seq_len`` windows,
  loss on every token;
- a JSONL file of ``{"prompt": ..., "completion": ...}`` lines: ``bos + prompt + completion + eos``, loss on the
  completion tokens only (prompt tokens and right padding get label -100); a line with only ``"text"`` is a
  plain example;
- ``hf:NAME[:SPLIT]`` or a dataset name that is no file: a dataset already in the Hugging Face cache, through the
  ``datasets`` package if installed (columns prompt/completion or text).

Batches are a pure function of (seed, step): a resumed run sees the same batches as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from memtool.errors import UsageError


@dataclass
class TokenData:
    ids: torch.Tensor  # [N, T] int64
    labels: torch.Tensor  # [N, T] int64, -100 = no loss
    source: str
    kind: str

    def __len__(self) -> int:
        return self.ids.shape[0]

    @property
    def n_target_tokens(self) -> int:
        return int((self.labels[:, 1:] != -100).sum())


def _read_records(path: Path) -> list[dict]:
    recs = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise UsageError(f"{path}:{i}: not valid JSON ({e.msg})") from None
            if not isinstance(rec, dict) or not ({"prompt", "completion"} <= rec.keys() or "text" in rec):
                raise UsageError(f"{path}:{i}: expected an object with \"prompt\" and \"completion\" (or \"text\")")
            recs.append(rec)
    return recs


def _encode(tok, text: str) -> list[int]:
    return list(tok(text, add_special_tokens=False)["input_ids"]) if text else []


def _pad_id(tok) -> int:
    for v in (tok.pad_token_id, tok.eos_token_id, 0):
        if v is not None:
            return int(v)
    return 0


def records_to_tokens(tok, recs: list[dict], seq_len: int, source: str) -> TokenData:
    pad = _pad_id(tok)
    ids_rows, lab_rows = [], []
    for rec in recs:
        pre = [tok.bos_token_id] if tok.bos_token_id is not None else []
        if "prompt" in rec:
            p = pre + _encode(tok, str(rec["prompt"]))
            c = _encode(tok, str(rec["completion"])) + ([tok.eos_token_id] if tok.eos_token_id is not None else [])
        else:
            p, c = pre, _encode(tok, str(rec["text"]))
        ids = (p + c)[:seq_len]
        lab = ([-100] * len(p) + c)[:seq_len]
        if sum(1 for x in lab[1:] if x != -100) == 0:
            continue  # nothing to learn in this record (empty or truncated completion)
        n_pad = seq_len - len(ids)
        ids_rows.append(ids + [pad] * n_pad)
        lab_rows.append(lab + [-100] * n_pad)
    if not ids_rows:
        raise UsageError(f"{source}: no example with completion tokens within --seq-len {seq_len}")
    return TokenData(torch.tensor(ids_rows, dtype=torch.int64), torch.tensor(lab_rows, dtype=torch.int64),
                     source, "prompt-completion")


def text_to_tokens(tok, text: str, seq_len: int, source: str) -> TokenData:
    ids = _encode(tok, text)
    if tok.eos_token_id is not None:
        ids.append(tok.eos_token_id)
    if len(ids) < 2:
        raise UsageError(f"{source}: no text to train on")
    n = max(1, len(ids) // seq_len)
    if len(ids) < seq_len:  # one short example, padded
        pad = _pad_id(tok)
        row, lab = ids + [pad] * (seq_len - len(ids)), ids + [-100] * (seq_len - len(ids))
        t = torch.tensor([row]), torch.tensor([lab])
        return TokenData(t[0], t[1], source, "text")
    x = torch.tensor(ids[: n * seq_len], dtype=torch.int64).view(n, seq_len)
    return TokenData(x, x.clone(), source, "text")


def _is_dataset_name(spec: str) -> bool:
    path = Path(spec).expanduser()
    return spec.startswith("hf:") or (not path.exists() and "/" in spec and not spec.startswith((".", "/", "~"))
                                      and not path.suffix)


def check_data_spec(spec: str) -> None:
    """Cheap checks before any model is loaded: the file exists and is not empty."""
    if _is_dataset_name(spec):
        return
    path = Path(spec).expanduser()
    if not path.is_file():
        raise UsageError(f"data file not found: {spec}")
    if path.stat().st_size == 0:
        raise UsageError(f"data file is empty: {spec}")


def load_data(spec: str, tok, seq_len: int) -> TokenData:
    """Tokenize a data file or a cached HF dataset into ``seq_len`` examples (see module doc)."""
    if seq_len < 2:
        raise UsageError(f"--seq-len must be >= 2 (got {seq_len})")
    if _is_dataset_name(spec):
        return _hf_dataset(spec[3:] if spec.startswith("hf:") else spec, tok, seq_len)
    check_data_spec(spec)
    path = Path(spec).expanduser()
    if path.suffix.lower() in (".jsonl", ".json"):
        recs = _read_records(path)
        if not recs:
            raise UsageError(f"data file has no records: {spec}")
        return records_to_tokens(tok, recs, seq_len, str(path))
    text = path.read_text(encoding="utf-8", errors="replace")
    if not text.strip():
        raise UsageError(f"data file is empty: {spec}")
    return text_to_tokens(tok, text, seq_len, str(path))


def _hf_dataset(name: str, tok, seq_len: int) -> TokenData:
    try:
        import datasets
    except ImportError:
        raise UsageError(f"data {name!r} is not a file and the 'datasets' package is not installed") from None
    parts = name.split(":")
    ds_name, split = parts[0], parts[1] if len(parts) > 1 else "train"
    try:
        ds = datasets.load_dataset(ds_name, split=split)
    except Exception as e:  # noqa: BLE001 - any failure to find the cached dataset is a usage problem
        raise UsageError(f"dataset {ds_name!r} (split {split}) is not available offline: {str(e).splitlines()[0]}")
    cols = set(ds.column_names)
    if {"prompt", "completion"} <= cols:
        return records_to_tokens(tok, [dict(r) for r in ds], seq_len, f"hf:{name}")
    if "text" in cols:
        return text_to_tokens(tok, "\n\n".join(str(t) for t in ds["text"] if t), seq_len, f"hf:{name}")
    raise UsageError(f"dataset {ds_name!r} has neither prompt/completion nor text columns ({sorted(cols)})")


def split_heldout(data: TokenData, frac: float) -> tuple[TokenData, TokenData | None]:
    """Last ``frac`` of the examples (at least one, if there are two or more) held out for evaluation."""
    n = len(data)
    if frac <= 0 or n < 2:
        return data, None
    k = min(n - 1, max(1, int(round(n * frac))))
    tr = TokenData(data.ids[: n - k], data.labels[: n - k], data.source, data.kind)
    ev = TokenData(data.ids[n - k:], data.labels[n - k:], data.source, data.kind)
    return tr, ev


def batch_indices(n: int, batch: int, step: int, seed: int) -> torch.Tensor:
    """Rows of step ``step`` (1-based): epochs of seeded permutations, a pure function of (seed, step)."""
    start = (step - 1) * batch
    out = []
    while len(out) < batch:
        epoch, off = divmod(start + len(out), n)
        g = torch.Generator().manual_seed((seed * 1_000_003 + epoch) & 0x7FFFFFFFFFFFFFFF)
        perm = torch.randperm(n, generator=g)
        take = min(batch - len(out), n - off)
        out += perm[off: off + take].tolist()
    return torch.tensor(out, dtype=torch.int64)


def get_batch(data: TokenData, batch: int, step: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    idx = batch_indices(len(data), batch, step, seed)
    return data.ids[idx], data.labels[idx]


def eval_batches(data: TokenData, batch: int, max_examples: int | None = None):
    n = len(data) if max_examples is None else min(len(data), max_examples)
    for s in range(0, n, batch):
        yield data.ids[s: min(n, s + batch)], data.labels[s: min(n, s + batch)]


def n_batches(n: int, batch: int) -> int:
    return math.ceil(n / batch)


__all__ = ["TokenData", "load_data", "split_heldout", "get_batch", "eval_batches", "batch_indices"]
