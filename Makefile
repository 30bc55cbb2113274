# petcohort: two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.stamp-install

.PHONY: venv demo test test-fast bench clean

venv: $(STAMP)

# Idempotent: re-installs only when pyproject.toml or the segmentation stack changes.
# The segmentation stack (CPU torch 2.13.0, nnU-Net v2, ANTsPy) has its own script:
# some of it must go in with --no-deps (see the script's comments).
$(STAMP): pyproject.toml scripts/install_seg.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	bash scripts/install_seg.sh $(VENV)
	touch $(STAMP)

demo: venv
	$(BIN)/petcohort demo --out demo-output

test: venv
	$(BIN)/python -m pytest -q --durations=15

test-fast: venv
	$(BIN)/python -m pytest -q -m "not slow and not browser"

bench: venv
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf demo-output test-output .pytest_cache .hypothesis
