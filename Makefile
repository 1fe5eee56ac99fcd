# Two commands from a clean clone: `make demo` and `make test`. Each makes its own virtual environment.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is pinned to a release; set TORCH_SPEC=torch to take whatever build pip picks for your machine.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=
# The suite in parallel, one worker per core (pytest-xdist); tests marked xdist_group run on one worker, in turn.
PYTEST_PARALLEL ?= -n auto --dist loadgroup
# The floors job: a second venv with the lowest versions pyproject.toml declares for lightning (and the standalone
# pytorch-lightning), optuna, torchmetrics and jsonargparse (.ci/floors.py reads them). torch stays TORCH_SPEC:
# the CPU wheel of the torch floor (2.3) is not on PyPI, whose torch 2.3 is a 2.5 GB CUDA build.
FLOORS_VENV ?= .venv-floors
FLOORS_PY := $(FLOORS_VENV)/bin/python

.PHONY: venv test test-floors docs demo bench lint clean

$(VENV)/.stamp: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

venv: $(VENV)/.stamp

$(FLOORS_VENV)/.stamp: pyproject.toml Makefile .ci/floors.py
	$(PYTHON) -m venv $(FLOORS_VENV)
	$(FLOORS_PY) -m pip install --quiet --upgrade pip
	$(FLOORS_PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(FLOORS_PY) -m pip install --quiet -e ".[dev]" $$($(FLOORS_PY) .ci/floors.py)
	$(FLOORS_PY) -m pip list 2>/dev/null | grep -iE "^(torch|lightning|pytorch-lightning|optuna|torchmetrics|jsonargparse) "
	touch $@

test: venv
	$(PY) -m pytest -q $(PYTEST_PARALLEL) $(PYTEST_ARGS)

# The whole suite again on the declared floors (and the standalone pytorch_lightning at the lightning floor).
test-floors: $(FLOORS_VENV)/.stamp
	$(FLOORS_PY) -m pytest -q -p no:cacheprovider $(PYTEST_PARALLEL) $(PYTEST_ARGS)

# The HTML reference (docs/_build/html/index.html): every warning and broken reference fails the build.
docs: venv
	$(PY) -m sphinx -E -W --keep-going -n -q -b html docs docs/_build/html
	@echo "built docs/_build/html/index.html"

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
	rm -rf $(VENV) $(FLOORS_VENV) .pytest_cache lightning_logs docs/_build docs/api
