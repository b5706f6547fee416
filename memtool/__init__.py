"""memtool: make large language models fit in less memory.

Importing memtool registers its transformers quantizer (``quant_method: "memtool"``) when transformers is
installed, so ``AutoModelForCausalLM.from_pretrained(artifact_dir)`` loads packed artifacts.
"""

__version__ = "0.1.0"


def _register_hf() -> None:
    try:
        from memtool.compress import hf_quantizer  # noqa: F401  (registers on import)
    except ImportError:  # transformers missing, or the module not present in a partial install
        pass


_register_hf()
