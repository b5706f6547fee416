"""Model I/O: resolve a MODEL argument, stream its tensors, build modules and tokenizers, eval data."""

from memtool.models.load import load_model, load_tokenizer, parse_dtype
from memtool.models.resolve import ModelRef, resolve
from memtool.models.source import TensorSource

__all__ = ["ModelRef", "TensorSource", "load_model", "load_tokenizer", "parse_dtype", "resolve"]
