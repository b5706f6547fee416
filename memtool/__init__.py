"""memtool: make large language models fit in less memory.

Importing memtool registers its transformers quantizer (``quant_method: "memtool"``) when transformers is
installed, so ``AutoModelForCausalLM.from_pretrained(artifact_dir)`` loads packed artifacts. The registration
is lazy: if transformers' quantizer registry (``transformers.quantizers.auto``) is already imported it happens
now, otherwise right after that module is first imported (an import hook), so ``import memtool`` and the CLI do
not pay the ~2 s import of transformers and torch.
"""

import importlib.abc
import importlib.util
import sys

__version__ = "0.1.0"

_HF_REGISTRY = "transformers.quantizers.auto"


def _register_hf() -> None:
    try:
        from memtool.compress import hf_quantizer  # noqa: F401  (registers on import)
    except ImportError:  # transformers missing, or the module not present in a partial install
        pass


class _RegisterAfterImport(importlib.abc.MetaPathFinder):
    """Finds ``transformers.quantizers.auto`` like the other finders do, then registers once it has run."""

    def find_spec(self, fullname, path, target=None):
        if fullname != _HF_REGISTRY:
            return None
        sys.meta_path.remove(self)  # one shot; also keeps find_spec below from finding this finder again
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            _register_hf()

        spec.loader.exec_module = exec_module
        return spec


if _HF_REGISTRY in sys.modules:
    _register_hf()
elif not any(isinstance(f, _RegisterAfterImport) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterAfterImport())
