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
# to record: DALI "mixed" img/s of the training image path (goal >= 10,000 on one H100), the
# best hardware-decoder share / threads / preallocation (--sweep), and GPU-vs-CPU decode
# parity against the stated tolerance (exit 1 if it fails). Then the GPU tests, which show
# as skipped, with their reason, where TensorFlow sees no GPU. About 3 minutes.
GPU_PYTHON ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,python3)
gpu-check:
	$(GPU_PYTHON) pipelines/dali_bench.py --synth 4096 --sweep --parity --seconds 8 --json
	@if $(GPU_PYTHON) -c "import detrec, tensorflow" 2>/dev/null; then \
	  $(GPU_PYTHON) -m pytest -q -ra tests/test_gpu_dali.py; \
	else echo "gpu-check: no detrec/TensorFlow in $(GPU_PYTHON): the GPU tests did not run"; fi

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache
