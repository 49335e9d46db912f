# Set-up and entry points. `make demo` runs the main sweep, `make test` the test suite;
# both create or update the virtualenv first.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# CPU machines: the local CPU build. GPU machines: `make TORCH_SPEC=torch setup`, or keep an installed CUDA torch.
TORCH_SPEC ?= torch==2.13.0
# Every package pinned to the versions the test suite passed with (CPU machines); `make lock`
# refreshes it. GPU machines: `make CONSTRAINTS= TORCH_SPEC=torch setup` (their CUDA torch differs).
CONSTRAINTS ?= constraints/cpu.txt
PIN := $(if $(CONSTRAINTS),-c $(CONSTRAINTS))
SWEEP ?= scorer=topo,cosine sparsity=0.1,0.2,0.3

.PHONY: setup demo lint test test-fast bench clean-cache lock

$(VENV)/.installed: pyproject.toml Makefile $(CONSTRAINTS)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q -U pip $(PIN)
	$(PIP) install -q "$(TORCH_SPEC)" $(PIN)
	# dionysus builds from source and needs Boost headers newer than Debian's libboost-dev
	$(PIP) install -q boost-headers $(PIN)
	CPLUS_INCLUDE_PATH=$$($(PY) -c "import boost_headers; print(boost_headers.get_include())") \
		$(PIP) install -q dionysus==2.2.3 $(PIN)
	$(PIP) install -q -e ".[dev,lmms-deps,cluster]" $(PIN)
	# lmms-eval without its dependency pins (they would replace torch with a CUDA build);
	# what it needs is declared in the lmms-deps extra
	$(PIP) install -q --no-deps lmms-eval==0.7.3 $(PIN)
	$(PY) -c "import lmms_eval.evaluator, dionysus, gudhi, torch"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(PY) launch.py -m $(SWEEP)

# ruff (pyflakes, pycodestyle errors) everywhere; mypy on the typed core. Config: pyproject.toml.
lint: setup
	$(PY) -m ruff check .
	$(PY) -m mypy -m topovlm.api -m topovlm.registry -m topovlm.results

# Every test: tests/unit, tests/integration (the real embedded model, built on first use),
# tests/reliability, the slow subprocess sweeps. What CI runs (.ci/run).
test: setup
	$(PY) -m pytest -q -ra

# Without the real embedded model and the slow tests (launch.py sweeps, tests over ~3 s):
# 384 tests, measured 1 min 52 s wall (86 s CPU) on 2 cores that a training job shared.
test-fast: setup
	$(PY) -m pytest -q -m "not integration and not slow"

# Every harness benchmark, each without arguments (the embedded model; research/ holds the
# default model's training probes, which take their own arguments).
bench: setup
	for f in bench/*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

clean-cache:
	rm -rf $${TOPOVLM_CACHE:-$$HOME/.cache/topovlm}/captures $${TOPOVLM_CACHE:-$$HOME/.cache/topovlm}/scores $${TOPOVLM_CACHE:-$$HOME/.cache/topovlm}/completed

# Refresh constraints/cpu.txt: a fresh virtualenv resolved without pins, the suite run on it,
# then its exact versions written out. Commit the file when the suite passed.
lock:
	rm -rf .venv-lock
	$(MAKE) VENV=.venv-lock CONSTRAINTS= test
	{ echo '# Versions the test suite passed with on a CPU machine (Python 3.11, torch CPU build).'; \
	  echo '# Regenerate with `make lock` (fresh virtualenv, unpinned resolve, full suite, pip list).'; \
	  .venv-lock/bin/python -m pip list --format=freeze --exclude-editable; } > constraints/cpu.txt
	rm -rf .venv-lock
