# Two entry points (see README): `make serve` runs the product on an embedded
# default, `make test` runs every test. Both set up .venv on a fresh machine.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# Reinstall whenever the dependency list changes.
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)

.PHONY: test test-core serve venv clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch first, so the CPU build is taken; vLLM's CPU wheel then resolves against it.
# torchvision/torchaudio/torchcodec come in as CUDA builds and break `import vllm` on CPU.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[engine-cpu,serve,test]'
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

venv: $(STAMP)

test: venv
	$(BIN)/python -m pytest -q tests

# The policy core alone, without the engine and serving stacks.
test-core: $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/python -m pytest -q tests -m "not engine and not serve"

clean:
	rm -rf $(VENV) build *.egg-info
