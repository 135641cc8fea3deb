# Two commands matter: `make demo` and `make test`. Both install first (idempotent), and they
# install exactly the lock in locks/: the same versions on every machine and every day, until
# `make lock` refreshes it on purpose (review its diff like code).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# GPU=1 installs the gpu lock (tensorflow[and-cuda]) instead of the cpu one (tensorflow-cpu).
PROFILE := $(if $(GPU),gpu,cpu)
LOCK   := locks/$(PROFILE).txt
STAMP  := $(VENV)/.installed-$(PROFILE)
DEMO   ?= demo_out
# What each lock resolves: pyproject.toml with these extras, plus locks/tools.in.
EXTRAS_cpu := cpu dali train test bench-tfds
EXTRAS_gpu := gpu dali train test bench-tfds
# The Python the locks are for: CI's, and the Beam SDK image's (docker/beam.Dockerfile).
LOCK_PYTHON := 3.11
# Builds against the installed TensorFlow, so it is installed after the rest, without isolation.
PLUGIN := nvidia-dali-tf-plugin-cuda120
PLUGIN_PIN = $(shell grep -E '^$(PLUGIN)==' $(LOCK))

.PHONY: install lock demo test mutants gpu-check clean

install: $(STAMP)

# uv installs the lock: sync makes the venv hold exactly what the lock lists (it removes the
# rest), then detrec (editable) and the DALI plugin are built with the locked setuptools.
# --compile-bytecode: uv writes no .pyc by itself, and where PYTHONDONTWRITEBYTECODE is set
# (this machine, many images) Python never does either: every process then compiled Beam and
# TensorFlow again, ~4 s of start-up each (`detrec preprocess --help`: 6.4 s, 2.0 s with them).
$(STAMP): $(LOCK) pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check "$$(grep -E '^uv==' $(LOCK))"
	grep -v '^$(PLUGIN)==' $(LOCK) > $(VENV)/lock-sync.txt
	$(BIN)/uv pip sync -q --compile-bytecode --python $(BIN)/python $(VENV)/lock-sync.txt
	$(BIN)/uv pip install -q --python $(BIN)/python --no-deps --no-build-isolation -e . "$(PLUGIN_PIN)"
	# uv's cache does not know which TensorFlow a cached plugin build was compiled against:
	# where the cached one does not load, build it again against this one.
	$(BIN)/python -c "import nvidia.dali.plugin.tf" 2>/dev/null || $(BIN)/uv pip install -q --python $(BIN)/python \
	  --no-deps --no-build-isolation --refresh-package $(PLUGIN) --reinstall-package $(PLUGIN) "$(PLUGIN_PIN)"
	$(BIN)/uv pip check -q --python $(BIN)/python
	$(BIN)/detrec --help > /dev/null
	rm -f $(VENV)/.installed-*
	touch $@

# Refreshes the locks to what the index serves today (UPGRADE=NAME moves one package only), and
# the Dataflow workers' requirements from the cpu lock. The gpu lock is resolved within the cpu
# one, so every package the two share has one version. Review the diff before committing it.
UPGRADE ?=
UV_COMPILE = $(BIN)/uv pip compile -q --python-version $(LOCK_PYTHON) --custom-compile-command 'make lock' \
	$(if $(UPGRADE),--upgrade-package $(UPGRADE),--upgrade)
lock: $(STAMP)
	$(UV_COMPILE) --universal pyproject.toml locks/tools.in $(EXTRAS_cpu:%=--extra %) -o locks/cpu.txt
	$(UV_COMPILE) --universal pyproject.toml locks/tools.in $(EXTRAS_gpu:%=--extra %) -c locks/cpu.txt -o locks/gpu.txt
	$(UV_COMPILE) --python-platform x86_64-manylinux_2_28 pyproject.toml --extra cpu -c locks/cpu.txt \
	  -o pipelines/dataflow/requirements.txt

demo: install
	$(BIN)/python -m detrec.pipelines.demo --out $(DEMO)

test: install
	$(BIN)/python -m pytest -q -ra

# Which one-line bugs the fast loop lets through (tests/mutants.py); not part of `make test`.
mutants: install
	$(BIN)/python -m tests.mutants

# The first thing to run on a GPU machine (with DALI; TensorFlow optional). Prints the figure
# to record: DALI "mixed" img/s of the training decode-and-augment graph fed by DALI's own
# reader (goal >= 10,000 on one H100), the
# best hardware-decoder share / threads / preallocation (--sweep), and GPU-vs-CPU decode
# parity against the stated tolerance (exit 1 if it fails). With detrec and TensorFlow also
# the training path's own figure: `detrec bench input --decoder dali` on 4,096 synth images
# (DALI fed by detrec's external-source feed, train/input/dali_feed.py: whether that Python
# feed keeps up with nvJPEG), then the GPU tests, which show as skipped, with their reason,
# where TensorFlow sees no GPU. About 5 minutes.
GPU_PYTHON ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,python3)
GPU_CHECK_DIR ?= gpu_check_out
gpu-check:
	$(GPU_PYTHON) pipelines/dali_bench.py --synth 4096 --sweep --parity --seconds 8 --json
	@if $(GPU_PYTHON) -c "import detrec, tensorflow" 2>/dev/null; then \
	  { test -d $(GPU_CHECK_DIR)/src/ILSVRC || \
	    $(GPU_PYTHON) -m detrec.pipelines.cli synth $(GPU_CHECK_DIR)/src --train 4096 --val 64; } && \
	  $(GPU_PYTHON) -m detrec.pipelines.cli preprocess --input $(GPU_CHECK_DIR)/src/ILSVRC \
	    --output $(GPU_CHECK_DIR)/shards --verify-images header && \
	  $(GPU_PYTHON) -m detrec.pipelines.cli bench input --data $(GPU_CHECK_DIR)/shards --decoder dali --json && \
	  $(GPU_PYTHON) -m pytest -q -ra tests/test_gpu_dali.py; \
	else echo "gpu-check: no detrec/TensorFlow in $(GPU_PYTHON): the training path and GPU tests did not run"; fi

clean:
	rm -rf $(VENV) $(DEMO) $(GPU_CHECK_DIR) .pytest_cache
