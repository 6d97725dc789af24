# Two entry points for a fresh machine (see README): `make reproduce` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
PROFILE ?= default
STAMP  := $(VENV)/.bdlib-installed
# glibc malloc: reuse freed tensor memory instead of mmap/munmap per pass (a 1.8-3x
# faster CPU training step; bdlib/allocator.py says why). Everything make runs inherits them.
export MALLOC_MMAP_MAX_ ?= 0
export MALLOC_TRIM_THRESHOLD_ ?= 4294967296

.PHONY: venv reproduce test smoke figures bench clean-data

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "bdlib needs Python 3.11, found " + sys.version.split()[0]'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -e '.[dev]'  # compiles .pyc at install: read even where PYTHONDONTWRITEBYTECODE is set (CI), saving ≈ 5 s of torch/pandas compilation in every process and notebook kernel
	$(PY) -m ipykernel install --sys-prefix --name bdlib --display-name "Python 3.11 (bdlib)" \
		--env MALLOC_MMAP_MAX_ $(MALLOC_MMAP_MAX_) --env MALLOC_TRIM_THRESHOLD_ $(MALLOC_TRIM_THRESHOLD_)
	touch $(STAMP)

venv: $(STAMP)

## compute the grid on Dask (local cluster, or SCHEDULER=tcp://HOST:8786), then run every notebook headless
reproduce: $(STAMP)
	$(PY) -m bdlib run --profile $(PROFILE) $(if $(SCHEDULER),--scheduler $(SCHEDULER))

## unit tests + nbval over every notebook under the smoke profile, on TEST_WORKERS processes
## (pytest-xdist; one torch thread each, so 2 workers fill CI's 2 cores without oversubscribing;
## --dist loadfile keeps each test file and each notebook's cells on one worker, in order;
## --no-loadscope-reorder keeps collection order, where tests/conftest.py puts the regression test first)
TEST_WORKERS ?= 2
test: $(STAMP)
	BDLIB_PROFILE=smoke OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile \
		--no-loadscope-reorder tests --nbval-lax --nbval-current-env notebooks

smoke: $(STAMP)
	$(PY) -m bdlib run --profile smoke

## redraw every figure in figures/ from the CSV next to it (PNG + PDF; no training, well under a minute)
figures: $(STAMP)
	$(PY) -m bdlib figures

## cost benchmarks (timings are machine-dependent: a script, not a test)
bench: $(STAMP)
	$(PY) benchmarks/gnft_cost.py --batch 80
	$(PY) benchmarks/gnft_cost.py --batch 256 --steps 10
	$(PY) benchmarks/defense_cost.py
	$(PY) benchmarks/study_grid.py --profile smoke

clean-data:
	rm -rf data/embedded data/store data/executed
