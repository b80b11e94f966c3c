# Two commands on a fresh machine:  `make demo` (set up, then run every pipeline)  and  `make test`.
# The CPU build of PyTorch is the default: PyPI's Linux wheel carries CUDA (gigabytes), PyTorch's CPU index does not;
# where that index cannot be reached pip takes PyPI's at once (no retries). A CUDA user passes e.g.
#   make setup TORCH="torch --index-url https://download.pytorch.org/whl/cu128"
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0 --extra-index-url https://download.pytorch.org/whl/cpu --retries 0
BIN    := $(VENV)/bin

.PHONY: setup demo test bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

demo: setup
	$(BIN)/nexttoken demo

test: setup
	$(BIN)/python -m pytest

bench: setup
	for b in benchmarks/*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
