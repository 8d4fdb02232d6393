# Set-up and entry points. Every target installs what it needs into .venv (idempotent: a stamp file
# records the install, so a second run is fast).
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install docker browser demo demo-full test test-gpu bench clean

$(STAMP): pyproject.toml scripts/install.sh
	bash scripts/install.sh $(PY) $(VENV)
	touch $(STAMP)

install: $(STAMP)

# Docker engine (installed from Debian and started when absent) and the locally built base image.
docker: $(STAMP)
	bash scripts/ensure_docker.sh
	$(VPY) -m north_lightning tasks build-base

# The main job end to end in a few minutes (DEMO=short, the default); `make demo-full` (= DEMO=full make demo) is the
# long run that shows the tiny model learning (~60-75 min on 2 cores).
demo: install docker
	bash scripts/demo.sh

demo-full: install docker
	DEMO=full bash scripts/demo.sh

# Debian's chromium + chromium-driver for the humaneval browser test.
browser:
	bash scripts/ensure_browser.sh

test: install docker browser
	CI=$${CI:-} $(VPY) -m pytest -m "not gpu" -q -rs --durations=25 $(PYTEST_ARGS)

# On a lent GPU machine (torch with CUDA already installed): gpu tests + GPU benchmarks.
test-gpu:
	bash scripts/test_gpu.sh

bench: install
	bash scripts/bench.sh

clean:
	rm -rf $(VENV) runs outputs lightning_logs .pytest_cache
