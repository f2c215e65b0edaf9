# llmtrain: `make run` executes every notebook; `make test` runs every test.
# Both create .venv first if it is missing. Only Python 3 (>= 3.10) is needed.

PYTHON ?= python3
VENV   := .venv
# Notebook kernels must use Jupyter's inline backend: a MPLBACKEND from the environment
# (Agg, say) would silently drop every figure from the outputs nbval compares.
unexport MPLBACKEND
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv run test notebooks lab clean help

help:
	@echo "make run        execute every notebook headless -> build/notebooks, build/html/index.html, figures/"
	@echo "make test       unit tests, cross-checks, CLI tests, notebook pair checks, nbval"
	@echo "make venv       create .venv and install the project (idempotent)"
	@echo "make notebooks  re-execute notebooks in place (refresh stored outputs)"
	@echo "make lab        start JupyterLab"

venv: $(STAMP)

$(STAMP): pyproject.toml requirements/constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check \
	    -c requirements/constraints.txt -e '.[hf,dev]'
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/python scripts/notebooks.py run

test: $(STAMP)
	$(BIN)/python -m pytest tests notebooks --nbval --nbval-sanitize-with tests/nbval_sanitize.cfg

notebooks: $(STAMP)
	$(BIN)/python scripts/notebooks.py refresh

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks

clean:
	rm -rf build .pytest_cache
