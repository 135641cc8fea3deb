# Two commands matter: `make demo` and `make test`. Both install first (idempotent).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# GPU=1 installs tensorflow[and-cuda] instead of tensorflow-cpu.
EXTRAS := $(if $(GPU),gpu,cpu,dali),train,test,bench-tfds
STAMP  := $(VENV)/.installed-$(if $(GPU),gpu,cpu)
DEMO   ?= demo_out

.PHONY: install demo test gpu-check clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	$(BIN)/pip install -q -e '.[$(EXTRAS)]'
	# The DALI TF plugin compiles against the TensorFlow just installed.
	$(BIN)/pip install -q --no-build-isolation 'nvidia-dali-tf-plugin-cuda120>=2.4,<2.5'
	$(BIN)/detrec --help > /dev/null
	touch $@

demo: install
	$(BIN)/python -m detrec.pipelines.demo --out $(DEMO)

test: install
	$(BIN)/python -m pytest -q -ra

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
