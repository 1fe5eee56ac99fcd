# Two commands from a clean clone: `make demo` and `make test`. Each makes its own virtual environment.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is pinned to a release; set TORCH_SPEC=torch to take whatever build pip picks for your machine.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: venv test demo bench lint clean

$(VENV)/.stamp: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

venv: $(VENV)/.stamp

test: venv
	$(PY) -m pytest -q $(PYTEST_ARGS)

demo: venv
	$(PY) examples/demo.py

bench: venv
	$(PY) benchmarks/overhead.py
	$(PY) benchmarks/range_test.py
	$(PY) benchmarks/fashion_mnist.py
	$(PY) benchmarks/tuning.py

lint: venv
	$(VENV)/bin/ruff check lightning_clr tests

clean:
	rm -rf $(VENV) .pytest_cache lightning_logs
