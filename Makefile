# tinygraph's front door. Every target sets up what it needs: a virtual environment in .venv made
# from python3 (3.11+), the project installed into it in editable mode, and graphviz's `dot` where
# a target draws graphs. Extra options for the command go in ARGS, e.g. make train ARGS="--steps 500".

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Stamps record that an install finished; the dev one is redone whenever pyproject.toml changes.
# The dev install includes the `dist` extra (mpi4py, the mpich runtime with mpiexec), so that
# `make test` runs the data-parallel tests instead of skipping them.
DEV_STAMP := $(VENV)/.installed-dev
ORACLE_STAMP := $(VENV)/.installed-oracle
# Compat mode puts the checkout itself on sys.path, so a package folder added after the install
# (models/, charlm/, viz/, data/ ...) is importable at once, not only after the next reinstall.
PIP_EDITABLE := --config-settings editable_mode=compat
ARGS ?=
# BLAS threads for the model commands. The recurrent matrix products are small: a second thread
# gains ~1.3x on two free cores, but when another process is busy on them the threads spin waiting
# for each other and a step becomes 5-10x slower. One thread is the predictable choice.
BLAS_THREADS ?= 1
RUN_MODEL := OPENBLAS_NUM_THREADS=$(BLAS_THREADS) OMP_NUM_THREADS=$(BLAS_THREADS) MKL_NUM_THREADS=$(BLAS_THREADS)

.PHONY: help venv oracle graphviz browser data test lint train sample finetune eval graph gradflow docs bench quality report clean

help:
	@echo "make data      prepare data/shakespeare.txt (the default corpus; a no-op once it exists)"
	@echo "make train     prepare data/shakespeare.txt, then train the default config into runs/default"
	@echo "make sample    generate text from runs/default"
	@echo "make finetune  continue runs/default/best.npz on another text (ARGS=\"--corpus FILE\")"
	@echo "make eval      score runs/default on its validation split"
	@echo "make test      run the test suite and ruff"
	@echo "make graph     draw the unrolled BPTT graph of a small LSTM: docs/bptt_lstm.svg"
	@echo "make gradflow  plot gradient flow over time for rnn, lstm, gru: docs/gradflow.svg"
	@echo "make docs      run every example of docs/tutorial.md at full size; its pictures go to docs/tutorial/"
	@echo "make report    write runs/default/report.html (training writes it too, at every evaluation)"
	@echo "make bench     time training steps against PyTorch (installs torch into .venv)"
	@echo "make quality   tinygraph vs torch nn.LSTM, validation loss against wall-clock (ARGS=\"--minutes 5,10,30 --corpus FILE\")"
	@echo "make oracle    install torch 2.13.0 into .venv (the PyTorch comparison tests stop skipping)"
	@echo "make lint      ruff check and ruff format --check"
	@echo "make clean     remove .venv and caches (keeps runs/ and data/)"
	@echo "Options for the command: ARGS=\"...\"; BLAS threads of train/sample/finetune/eval: BLAS_THREADS=1"

venv: $(DEV_STAMP)

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "tinygraph needs Python 3.11 or newer; $(PYTHON) is " + sys.version.split()[0] + " (try make PYTHON=python3.11)")'
	@# A failed venv (Debian without python3-venv) would leave a python that has no pip: remove it.
	$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); \
		echo "could not create $(VENV) with $(PYTHON) -m venv (on Debian/Ubuntu: apt-get install python3-venv)" >&2; exit 1; }

$(DEV_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install $(PIP_EDITABLE) -e '.[dev,fast,dist]'
	@touch $@

# torch==2.13.0 (the `oracle` extra): only for the PyTorch comparison tests and the benchmark.
oracle: $(ORACLE_STAMP)

$(ORACLE_STAMP): $(DEV_STAMP)
	$(BIN)/python -m pip install $(PIP_EDITABLE) -e '.[dev,fast,dist,oracle]'
	@touch $@

# $(call debian_tool,TEST,PACKAGE,MISSING,STATUS): nothing when the shell TEST succeeds; as root with
# apt-get, install Debian's PACKAGE; otherwise print MISSING and end with STATUS (1 stops make).
define debian_tool
	@if $(1); then \
		exit 0; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "$(2): not found; installing Debian's $(2) package with apt-get"; \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $(2); \
	else \
		echo "$(3)" >&2; \
		exit $(4); \
	fi
endef

GRAPHVIZ_MISSING := graphviz's 'dot' is missing: install it (Debian/Ubuntu: sudo apt-get install graphviz; macOS: brew install graphviz) and run make again
graphviz:
	$(call debian_tool,command -v dot >/dev/null 2>&1,graphviz,$(GRAPHVIZ_MISSING),1)

# Debian's chromium, for the browser tests of the run report (Playwright drives it; it downloads no
# browser of its own). Not fatal when missing: those tests then skip, saying why (on CI they fail).
CHROMIUM_FOUND := command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || [ -n "$$TINYGRAPH_CHROMIUM" ]
CHROMIUM_MISSING := chromium is missing, so the browser tests of the run report will skip: install it (Debian/Ubuntu: sudo apt-get install chromium) or set TINYGRAPH_CHROMIUM=/path/to/chrome
browser:
	$(call debian_tool,$(CHROMIUM_FOUND),chromium,$(CHROMIUM_MISSING),0)

data: venv
	$(BIN)/python -m data.prepare

# pytest's exit status 5 means it collected no test: say so rather than let it pass for a result.
test: graphviz browser venv
	@$(BIN)/pytest -q $(ARGS) || { rc=$$?; \
		if [ $$rc -eq 5 ]; then echo "make test: pytest ran no tests (exit 5)" >&2; fi; exit $$rc; }
	$(BIN)/ruff check .

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

train: data
	$(RUN_MODEL) $(BIN)/tinygraph train $(ARGS)

sample: venv
	$(RUN_MODEL) $(BIN)/tinygraph sample --checkpoint runs/default $(ARGS)

finetune: venv
	$(RUN_MODEL) $(BIN)/tinygraph finetune --from runs/default/best.npz $(ARGS)

eval: venv
	$(RUN_MODEL) $(BIN)/tinygraph eval --checkpoint runs/default $(ARGS)

graph: graphviz venv
	$(BIN)/tinygraph graph --cell lstm --steps 4 --layers 1 --level op --out docs/bptt_lstm.svg $(ARGS)

gradflow: venv
	$(BIN)/tinygraph gradflow --cell rnn,lstm,gru --steps 100 --out docs/gradflow.svg $(ARGS)

# The tutorial's code blocks, run as the test suite runs them but at full size (chapter 7 trains every
# cell at every length: minutes), in docs/tutorial/, where the pictures it shows land; what each block
# prints is checked against the page. ARGS="--chapter 5" runs one chapter.
docs: graphviz venv
	$(RUN_MODEL) $(BIN)/python tests/test_tutorial.py --out docs/tutorial $(ARGS)

report: venv
	$(BIN)/tinygraph report runs/default $(ARGS)

bench: oracle
	$(BIN)/tinygraph bench $(ARGS)

quality: oracle
	$(RUN_MODEL) $(BIN)/tinygraph bench --quality $(ARGS)

# Never touches runs/ (checkpoints) or data/ (the corpus and its download cache).
clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info build dist
	find . -path ./.git -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +
