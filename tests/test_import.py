"""``import memtool``: light (no torch/transformers), and the transformers quantizer registers lazily."""

import subprocess
import sys

LAZY = """
import sys, memtool
assert "transformers" not in sys.modules and "torch" not in sys.modules, "import memtool pulled heavy deps"
from transformers import AutoModelForCausalLM  # imports transformers.quantizers.auto -> memtool registers
from transformers.quantizers.auto import AUTO_QUANTIZATION_CONFIG_MAPPING, AUTO_QUANTIZER_MAPPING
assert "memtool" in AUTO_QUANTIZER_MAPPING and "memtool" in AUTO_QUANTIZATION_CONFIG_MAPPING
print("ok")
"""

EAGER = """
import transformers.quantizers
import memtool
from transformers.quantizers.auto import AUTO_QUANTIZER_MAPPING
assert "memtool" in AUTO_QUANTIZER_MAPPING
print("ok")
"""


def _run(code: str) -> str:
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout.strip()


def test_import_is_light_and_registers_when_transformers_loads():
    assert _run(LAZY) == "ok"


def test_registers_at_once_when_transformers_is_already_imported():
    assert _run(EAGER) == "ok"
