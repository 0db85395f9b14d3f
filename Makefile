# Two commands: `make demo` and `make test`. Each creates .venv when it is missing.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q --disable-pip-version-check
# t5 is installed without its dependencies: its `mesh-tensorflow[transformer]` extra pulls
# `tensorflow-datasets`, a second distribution of the `tensorflow_datasets` module beside the
# `tfds-nightly` that seqio-nightly pins. pyproject.toml lists t5's real run-time requirements.
T5_PIN := t5==0.9.4
# Keep TF/absl start-up noise out of the tools' output.
export TF_CPP_MIN_LOG_LEVEL ?= 3

.PHONY: test demo install install-test clean-venv

$(VENV)/.installed: pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "Installing the project into $(VENV) (first time: a few minutes)..."
	@$(PIP) -e . 2>&1 | { grep -v "is ignored: it is neither" || true; }
	@$(PIP) --no-deps $(T5_PIN) 2>&1 | { grep -v "is ignored: it is neither" || true; }
	@$(PY) scripts/check_install.py
	@touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	@$(PIP) -e '.[test]' 2>&1 | { grep -v "is ignored: it is neither" || true; }
	@$(PY) scripts/check_install.py
	@touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

test: $(VENV)/.installed-test
	$(PY) -m pytest tests

demo: $(VENV)/.installed
	$(PY) -m pipelines.demo $(DEMO_ARGS)

clean-venv:
	rm -rf $(VENV)
