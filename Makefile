# llmtrain: `make run` executes every notebook; `make test` runs every test.
# Both create .venv first if it is missing. Only Python 3 (>= 3.10) is needed.

PYTHON ?= python3
VENV   := .venv
# Notebook kernels must use Jupyter's inline backend: a MPLBACKEND from the environment
# (Agg, say) would silently drop every figure from the outputs nbval compares.
unexport MPLBACKEND
# OpenMP threads that wait sleep instead of spinning on a core another kernel or rank needs: on a
# shared machine (a classroom server, two `make run` at once) spinning made 100 tiny-LLaMA steps
# 20x slower (scripts/notebooks.py, tests/test_load.py). A value from the environment is kept.
OMP_WAIT_POLICY ?= PASSIVE
export OMP_WAIT_POLICY
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# The nbval pass, on the notebooks only. Figures go to a temporary folder and are compared
# with figures/ at the end (conftest.py).
# nbval's own limits, for a loaded machine: a kernel may take minutes to start (default 60 s), and a
# cell gets make run's 600 s (default 2000 s: a kernel that died of SIGILL or OOM held CI that long).
NBVAL_LIMITS := --nbval-kernel-startup-timeout=300 --nbval-cell-timeout=600
NBVAL  := -m pytest notebooks --nbval --nbval-sanitize-with tests/nbval_sanitize.cfg $(NBVAL_LIMITS) -p no:cacheprovider
# Other CPUs, imitated on this one: torch's, MKL's and oneDNN's kernels for AVX2 and for
# plain SSE4 (vector widths change rounding). Stored outputs must hold under both.
ISA_AVX2 := ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2
ISA_BASE := ATEN_CPU_CAPABILITY=default MKL_ENABLE_INSTRUCTIONS=SSE4_2 ONEDNN_MAX_CPU_ISA=SSE41
# Jupyter refuses to start as root (containers, Colab-like boxes) unless told it may.
LAB_FLAGS := $(if $(filter 0,$(shell id -u 2>/dev/null)),--allow-root)

.PHONY: venv run test test-portable notebooks lab clean help

help:
	@echo "make run        execute every notebook headless -> build/notebooks, build/html/index.html, figures/"
	@echo "make test       unit tests, cross-checks, CLI tests, notebook pair checks, nbval"
	@echo "make test-portable  nbval again under AVX2 and under SSE4 kernels (other CPUs)"
	@echo "make venv       create .venv and install the project (idempotent)"
	@echo "make notebooks  re-execute notebooks in place (refresh stored outputs)"
	@echo "make lab        start JupyterLab"

venv: $(STAMP)

$(STAMP): pyproject.toml requirements/constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check \
	    -c requirements/constraints.txt -e '.[hf,dev,optim]'
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/python scripts/notebooks.py run

test: $(STAMP)
	$(BIN)/python -m pytest tests notebooks --nbval --nbval-sanitize-with tests/nbval_sanitize.cfg $(NBVAL_LIMITS)

# PORTABLE picks the passes: both by default; CI drops the one equal to this CPU's own kernels,
# which `make test` has just run (.ci/run).
PORTABLE ?= avx2 base
test-portable: $(STAMP)
	@tmp=$$(mktemp -d); status=0; pids=""; \
	for isa in $(PORTABLE); do case $$isa in \
	  avx2) env="$(ISA_AVX2)";; base) env="$(ISA_BASE)";; \
	  *) echo "PORTABLE: '$$isa' is not one of: avx2 base"; rm -rf $$tmp; exit 2;; esac; \
	  echo "== nbval with $$env (started)"; \
	  env $$env $(BIN)/python $(NBVAL) > $$tmp/$$isa.log 2>&1 & pids="$$pids $$isa:$$!"; \
	done; \
	for p in $$pids; do isa=$${p%%:*}; wait $${p#*:} || status=1; \
	  echo "== nbval under the $$isa kernels"; cat $$tmp/$$isa.log; done; \
	rm -rf $$tmp; exit $$status

notebooks: $(STAMP)
	$(BIN)/python scripts/notebooks.py refresh

lab: $(STAMP)
	$(BIN)/jupyter lab $(LAB_FLAGS) notebooks

clean:
	rm -rf build .pytest_cache
