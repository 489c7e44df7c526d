# Two entry points (see README): `make serve` runs the product on an embedded
# default, `make test` runs every test. Both set up .venv on a fresh machine.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# Every package version of the environment, transitive ones included (see its header).
LOCK := constraints-cpu.txt
# Reinstall whenever the dependency list or the lock changes.
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml $(LOCK) | sha1sum | cut -c1-12)

.PHONY: test test-core serve venv clean prometheus

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch first, so the CPU build is taken; vLLM's CPU wheel then resolves against it.
# torchvision/torchaudio/torchcodec come in as CUDA builds and break `import vllm` on CPU.
$(STAMP): $(BIN)/python pyproject.toml $(LOCK)
	$(BIN)/pip install -q -c $(LOCK) torch==2.13.0
	$(BIN)/pip install -q -c $(LOCK) -e '.[engine-cpu,serve,observability,test]'
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

venv: $(STAMP)

# Prometheus and promtool (Debian package) for the deploy and observability tests.
# The tests start their own prometheus on a loopback port; the service stays off.
prometheus:
	@command -v promtool >/dev/null && command -v prometheus >/dev/null || \
		(apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus && \
		 (systemctl disable --now prometheus 2>/dev/null || service prometheus stop 2>/dev/null || true))

test: venv prometheus
	$(BIN)/python -m pytest -q tests

# The product on its embedded default: a local Ray cluster, two tiny CPU engines,
# the PAB router and the OpenAI API at http://127.0.0.1:8000 (Ctrl-C stops it).
serve: venv
	RAY_AUTH_MODE=disabled $(BIN)/fairbatching serve

# The policy core alone, without the engine and serving stacks.
test-core: $(BIN)/python
	$(BIN)/pip install -q -c $(LOCK) -e '.[test]'
	$(BIN)/python -m pytest -q tests -m "not engine and not serve"

clean:
	rm -rf $(VENV) build *.egg-info
