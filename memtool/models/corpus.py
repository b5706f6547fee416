"""Evaluation and calibration text: a built-in offline corpus, a user file, or WikiText-2 through `datasets`.

The built-in corpus is drawn from the docstrings of a fixed list of standard-library modules, so it exists on
any machine with Python and needs no download. It is split deterministically into two disjoint halves:
``split="eval"`` (perplexity) and ``split="calib"`` (calibration for quantization), so calibration never sees
the evaluation text.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import sys
import warnings
from functools import lru_cache
from pathlib import Path

import torch

from memtool.errors import UsageError

# Fixed, sorted list: the selection is deterministic for a given Python version.
_MODULES = sorted([
    "argparse", "ast", "asyncio.events", "asyncio.tasks", "base64", "bisect", "calendar", "cmd", "codecs",
    "collections", "concurrent.futures._base", "configparser", "contextlib", "copy", "csv", "dataclasses",
    "datetime", "decimal", "difflib", "dis", "email.message", "email.utils", "enum", "fnmatch", "fractions",
    "ftplib", "functools", "getopt", "gettext", "glob", "gzip", "hashlib", "heapq", "hmac", "html.parser",
    "http.client", "http.cookiejar", "http.server", "imaplib", "inspect", "io", "ipaddress", "itertools",
    "json", "json.decoder", "locale", "logging", "logging.handlers", "lzma", "mailbox", "mimetypes",
    "multiprocessing.pool", "numbers", "operator", "optparse", "os", "pathlib", "pdb", "pickle", "pickletools",
    "platform", "plistlib", "poplib", "pprint", "profile", "pstats", "queue", "random", "re", "reprlib",
    "sched", "secrets", "selectors", "shelve", "shlex", "shutil", "smtplib", "socket", "socketserver",
    "sqlite3", "ssl", "statistics", "string", "struct", "subprocess", "tarfile", "tempfile", "textwrap",
    "threading", "timeit", "tokenize", "trace", "traceback", "turtle", "types", "typing", "unittest.case",
    "unittest.mock", "urllib.parse", "urllib.request", "uuid", "warnings", "wave", "weakref", "xml.dom.minidom",
    "xml.etree.ElementTree", "zipfile", "zoneinfo",
])


def _docs_of(modname: str) -> list[str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _collect(modname)


def _collect(modname: str) -> list[str]:
    try:
        mod = importlib.import_module(modname)
    except Exception:  # noqa: BLE001 - a module missing on some platform is skipped
        return []
    out = []
    if mod.__doc__:
        out.append(inspect.cleandoc(mod.__doc__))
    for name in sorted(vars(mod)):
        if name.startswith("_"):
            continue
        obj = getattr(mod, name)
        if getattr(obj, "__module__", None) != mod.__name__:
            continue
        if inspect.isclass(obj) or inspect.isfunction(obj):
            if obj.__doc__:
                out.append(inspect.cleandoc(obj.__doc__))
            if inspect.isclass(obj):
                for mname in sorted(vars(obj)):
                    m = vars(obj)[mname]
                    if not mname.startswith("_") and inspect.isfunction(m) and m.__doc__:
                        out.append(inspect.cleandoc(m.__doc__))
    return out


@lru_cache(maxsize=4)
def builtin_text(split: str = "eval") -> str:
    """Docstrings of the fixed module list; even-indexed modules form "eval", odd-indexed "calib"."""
    if split not in ("eval", "calib"):
        raise ValueError(f"split must be 'eval' or 'calib', not {split!r}")
    idx = 0 if split == "eval" else 1
    docs = []
    for i, m in enumerate(_MODULES):
        if i % 2 == idx:
            docs += _docs_of(m)
    return "\n\n".join(docs)


def corpus_name(source: str | None, split: str) -> str:
    if source in (None, "builtin"):
        return f"builtin-stdlib-docstrings/{split} (Python {sys.version_info.major}.{sys.version_info.minor})"
    return source


def load_text(source: str | None = None, split: str = "eval") -> str:
    """source: None/"builtin" | "wikitext2" | a path to a UTF-8 text file."""
    if source in (None, "builtin"):
        return builtin_text(split)
    if source == "wikitext2":
        return _wikitext2("test" if split == "eval" else "train")
    p = Path(source).expanduser()
    if not p.exists():
        raise UsageError(f"data file not found: {p}")
    if not p.is_file():
        raise UsageError(f"data path is not a file: {p}")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"data file is not UTF-8 text: {p}") from None
    if not text.strip():
        raise UsageError(f"data file is empty: {p}")
    return text


def _wikitext2(split: str) -> str:
    try:
        import datasets
    except ImportError:
        raise UsageError("--dataset wikitext2 needs the `datasets` package: pip install 'memtool[datasets]'") from None
    try:
        ds = datasets.load_dataset("wikitext", "wikitext-2-raw-v1", split=split)
    except Exception as e:  # noqa: BLE001
        raise UsageError(f"could not load wikitext-2 (offline and not cached?): {str(e).splitlines()[0]}") from None
    return "\n\n".join(ds["text"])


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def tokenize(tokenizer, text: str) -> torch.Tensor:
    """Token ids of the whole text as one 1-D LongTensor (no special tokens)."""
    ids = tokenizer(text, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def token_windows(tokenizer, text: str, seq_len: int, n_windows: int | None = None,
                  stride: int | None = None) -> tuple[torch.Tensor, int]:
    """Fixed-length windows over the token stream, in order from the start.

    Returns (windows [n, seq_len], score_from): in every window after the first only the positions from
    ``score_from`` on are scored (``seq_len - stride``; 0 for non-overlapping windows), the usual sliding
    perplexity protocol. n_windows=None takes every full window.
    """
    if seq_len < 2:
        raise UsageError("sequence length must be at least 2")
    stride = stride or seq_len
    if not 0 < stride <= seq_len:
        raise UsageError(f"stride must be in 1..{seq_len}, got {stride}")
    ids = tokenize(tokenizer, text)
    avail = 0 if len(ids) < seq_len else 1 + (len(ids) - seq_len) // stride
    if avail == 0:
        raise UsageError(f"text has {len(ids)} tokens, fewer than one window of {seq_len}")
    n = avail if n_windows is None else min(n_windows, avail)
    starts = torch.arange(n) * stride
    win = torch.stack([ids[s : s + seq_len] for s in starts.tolist()])
    return win, seq_len - stride


def calibration_tokens(tokenizer, n_samples: int = 128, seq_len: int = 512, source: str | None = None,
                       seed: int = 0) -> torch.Tensor:
    """n_samples random windows of seq_len tokens from the calibration split (deterministic for a seed)."""
    ids = tokenize(tokenizer, load_text(source, split="calib"))
    if len(ids) <= seq_len:
        raise UsageError(f"calibration text has {len(ids)} tokens, need more than {seq_len}")
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(ids) - seq_len, (n_samples,), generator=g)
    return torch.stack([ids[s : s + seq_len] for s in starts.tolist()])
