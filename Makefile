# Set-up and entry points. `make demo` runs the main sweep, `make test` the test suite;
# both create or update the virtualenv first.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# CPU machines: the local CPU build. GPU machines: `make TORCH_SPEC=torch setup`, or keep an installed CUDA torch.
TORCH_SPEC ?= torch==2.13.0
SWEEP ?= scorer=topo,cosine sparsity=0.1,0.2,0.3

.PHONY: setup demo test test-fast bench clean-cache

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q -U pip
	$(PIP) install -q "$(TORCH_SPEC)"
	# dionysus builds from source and needs Boost headers newer than Debian's libboost-dev
	$(PIP) install -q boost-headers
	CPLUS_INCLUDE_PATH=$$($(PY) -c "import boost_headers; print(boost_headers.get_include())") \
		$(PIP) install -q dionysus==2.2.3
	$(PIP) install -q -e ".[dev,lmms-deps,cluster]"
	# lmms-eval without its dependency pins (they would replace torch with a CUDA build)
	$(PIP) install -q --no-deps lmms-eval==0.7.3
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(PY) launch.py -m $(SWEEP)

test: setup
	$(PY) -m pytest -q -ra

test-fast: setup
	$(PY) -m pytest -q -m "not integration"

bench: setup
	for f in bench/*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

clean-cache:
	rm -rf $${TOPOVLM_CACHE:-$$HOME/.cache/topovlm}/captures $${TOPOVLM_CACHE:-$$HOME/.cache/topovlm}/scores $${TOPOVLM_CACHE:-$$HOME/.cache/topovlm}/completed
