"""transformers integration: ``quant_method: "memtool"`` for ``AutoModelForCausalLM.from_pretrained(artifact)``.

Importing this module (``import memtool`` does) registers :class:`MemtoolConfig` and :class:`MemtoolHfQuantizer`
with transformers (``register_quantization_config`` / ``register_quantizer``). Before the weights are loaded
the quantizer replaces each ``nn.Linear`` listed in ``quantization_config["modules"]`` by its format's module
(:class:`memtool.compress.modules.LutLinear` for ``lut``), whose buffers carry the stored tensor names; the
ordinary loader then fills them from the safetensors shards. An unknown format fails loudly.

Written against transformers 5.x (``preprocess_model`` -> ``_process_model_before_weight_loading``); the
optional hooks are defined defensively so that 4.x-era and 5.x quantizer bases both accept the class.
"""

from __future__ import annotations

from typing import Any

import torch

try:
    # submodules, not the package: this may run while ``transformers.quantizers`` itself is being imported
    # (memtool registers right after ``transformers.quantizers.auto`` executes; see memtool/__init__.py)
    from transformers.quantizers.auto import register_quantization_config, register_quantizer
    from transformers.quantizers.base import HfQuantizer
    from transformers.utils.quantization_config import QuantizationConfigMixin
except ImportError:  # pragma: no cover - an old transformers without third-party registration
    HfQuantizer = None  # type: ignore

QUANT_METHOD = "memtool"


if HfQuantizer is not None:

    class MemtoolConfig(QuantizationConfigMixin):
        """``quantization_config`` of a memtool artifact; keeps every field of config.json as an attribute."""

        def __init__(self, format: str = "lut", format_version: int = 1, modules: dict | None = None,
                     modules_to_not_convert: list | None = None, **kwargs: Any):
            self.quant_method = QUANT_METHOD
            self.format = format
            self.format_version = format_version
            self.modules = dict(modules or {})
            self.modules_to_not_convert = list(modules_to_not_convert or [])
            for k, v in kwargs.items():
                if k != "quant_method":
                    setattr(self, k, v)
            self.post_init()

        def post_init(self) -> None:
            from memtool.compress.artifact import FORMAT_VERSION

            if not isinstance(self.format_version, int) or self.format_version > FORMAT_VERSION:
                raise ValueError(f"memtool artifact format version {self.format_version!r} is not supported by this "
                                 f"memtool (reads up to {FORMAT_VERSION}): upgrade memtool")

        def to_dict(self) -> dict[str, Any]:
            import copy

            d = copy.deepcopy(self.__dict__)
            d["quant_method"] = QUANT_METHOD
            return d

        def get_loading_attributes(self) -> dict[str, Any]:
            return {}

    class MemtoolHfQuantizer(HfQuantizer):
        """Loads pre-quantized memtool artifacts (packed tensors -> memtool modules). Inference only."""

        requires_calibration = True
        requires_parameters_quantization = False
        required_packages = ["memtool"]

        def __init__(self, quantization_config, **kwargs):
            super().__init__(quantization_config, **kwargs)

        def validate_environment(self, *args, **kwargs):
            from memtool.compress import formats

            for name, meta in (self.quantization_config.modules or {}).items():
                fmt = formats.get(meta.get("format", "?"))  # unknown format -> UsageError (loud)
                fmt.validate_meta(name, meta)

        def update_dtype(self, dtype):
            return dtype

        def update_torch_dtype(self, dtype):  # transformers 4.x name
            return dtype

        def param_needs_quantization(self, model, param_name: str, **kwargs) -> bool:
            return False

        def check_quantized_param(self, *args, **kwargs) -> bool:  # transformers 4.x name
            return False

        def _process_model_before_weight_loading(self, model, **kwargs):
            from memtool.compress.modules import swap_modules

            dtype = kwargs.get("dtype") or kwargs.get("torch_dtype")
            if not isinstance(dtype, torch.dtype):
                dtype = None
            # build on the device the skeleton lives on (meta under transformers' empty init)
            try:
                dev = next(model.parameters()).device
            except StopIteration:
                dev = torch.device("meta")
            swapped = swap_modules(model, self.quantization_config.modules, dtype=dtype, device=dev)
            # transformers re-runs `_init_weights` on modules after loading; some (GPT-2's attention/MLP) touch
            # `child.weight`, which packed modules do not have. Packed modules have nothing to initialize, and a
            # parent holding no tensors of its own only initializes its children: mark both as initialized.
            for name in swapped:
                mod = model.get_submodule(name)
                mod._is_hf_initialized = True
                parent_name = name.rpartition(".")[0]
                parent = model.get_submodule(parent_name) if parent_name else model
                if parent is not model and not any(True for _ in parent.parameters(recurse=False)) \
                        and not any(True for _ in parent.buffers(recurse=False)):
                    parent._is_hf_initialized = True
            return model

        def _process_model_after_weight_loading(self, model, **kwargs):
            from memtool.compress.modules import LutLinear

            for m in model.modules():
                if isinstance(m, LutLinear):
                    m._lw = None
                    # fp16 parameters even if the loader cast floating buffers to the model dtype
                    m._apply(lambda t: t)
            return model

        def is_serializable(self, safe_serialization=None):
            return False

        @property
        def is_trainable(self) -> bool:
            return False

        @property
        def is_compileable(self) -> bool:
            return False

    def _register() -> None:
        from transformers.quantizers.auto import AUTO_QUANTIZATION_CONFIG_MAPPING, AUTO_QUANTIZER_MAPPING

        if QUANT_METHOD not in AUTO_QUANTIZATION_CONFIG_MAPPING:
            register_quantization_config(QUANT_METHOD)(MemtoolConfig)
        if QUANT_METHOD not in AUTO_QUANTIZER_MAPPING:
            register_quantizer(QUANT_METHOD)(MemtoolHfQuantizer)

    _register()

__all__ = ["QUANT_METHOD"] + (["MemtoolConfig", "MemtoolHfQuantizer"] if HfQuantizer is not None else [])
