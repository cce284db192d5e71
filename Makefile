# sptl: the two commands a new user needs are `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# torch is installed first, pinned to the build this machine serves from disk (CUDA build, runs on CPU);
# override for your platform, e.g. `make demo TORCH_SPEC="torch torchvision"`.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
DEMO_ARGS ?=

.PHONY: demo test docs lint install install-test clean

$(VENV)/.torch:
	python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet $(TORCH_SPEC)
	touch $@

$(VENV)/.sptl: $(VENV)/.torch pyproject.toml
	$(PIP) install --quiet -e .
	touch $@

$(VENV)/.sptl-test: $(VENV)/.torch pyproject.toml
	$(PIP) install --quiet -e ".[test,doc,dev]"
	touch $@ $(VENV)/.sptl

install: $(VENV)/.sptl
install-test: $(VENV)/.sptl-test

demo: install
	$(VENV)/bin/sptl demo $(DEMO_ARGS)

test: install-test
	$(PY) -m pytest
	$(MAKE) docs

docs: install-test
	rm -rf docs/_build docs/generated
	$(VENV)/bin/sphinx-build -W --keep-going -b html docs docs/_build/html

lint: install-test
	$(VENV)/bin/ruff check src tests benchmarks scripts tutorials
	$(VENV)/bin/ruff format --check src tests benchmarks scripts tutorials

clean:
	rm -rf $(VENV) docs/_build docs/generated sptl_demo .pytest_cache
