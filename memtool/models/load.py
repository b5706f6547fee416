"""Build an nn.Module (and tokenizer) from a resolved model. Pickle and remote code are off unless asked."""

from __future__ import annotations

import torch

from memtool.errors import UsageError
from memtool.models.resolve import ModelRef

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def parse_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name.lower()]
    except KeyError:
        raise UsageError(f"unknown dtype {name!r} (use one of float32, float16, bfloat16)") from None


def load_model(ref: ModelRef, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
               trust_remote_code: bool = False):
    """A causal LM in eval mode. memtool artifacts load through memtool's own loader (packed modules)."""
    if ref.is_artifact:
        from memtool.compress.modules import load_artifact_model

        return load_artifact_model(ref.path, device=device, dtype=dtype)
    if ref.quant_method is not None:
        raise UsageError(f"{ref.path} is quantized with '{ref.quant_method}', which memtool cannot load")
    from transformers import AutoModelForCausalLM

    kw = dict(trust_remote_code=trust_remote_code, use_safetensors=not ref.pickle_files)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(ref.path), dtype=dtype, **kw)
    except TypeError:  # transformers 4.x spells it torch_dtype
        model = AutoModelForCausalLM.from_pretrained(str(ref.path), torch_dtype=dtype, **kw)
    except ValueError as e:
        msg = str(e).splitlines()[0]
        if "trust_remote_code" in msg:
            raise UsageError(f"{ref.spec} needs custom code: pass --trust-remote-code if you trust it") from None
        raise UsageError(f"cannot load {ref.spec}: {msg}") from None
    return model.to(device).eval()


def load_tokenizer(ref: ModelRef, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(ref.path), trust_remote_code=trust_remote_code)
    except Exception as e:  # noqa: BLE001
        raise UsageError(f"no usable tokenizer in {ref.path}: {str(e).splitlines()[0]}") from None
