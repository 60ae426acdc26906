# The two commands of the README: `make demo` and `make test`.
# Each creates .venv when missing and installs everything, torch (CPU build) first.
PYTHON ?= python3
VENV   ?= .venv
# CPU build available offline; a GPU user sets TORCH= after installing a CUDA torch in .venv.
TORCH  ?= torch==2.13.0
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.genret-installed

.PHONY: install demo test clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	if [ -n "$(TORCH)" ]; then $(BIN)/python -m pip install --quiet "$(TORCH)"; fi
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/genret compare --config experiments/quick.yaml --out results/quick

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean:
	rm -rf results .pytest_cache .hypothesis
