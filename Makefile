# Two commands matter: `make demo` and `make test`. Both install first (idempotent).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# GPU=1 installs tensorflow[and-cuda] instead of tensorflow-cpu.
EXTRAS := $(if $(GPU),gpu,cpu,dali),train,test
STAMP  := $(VENV)/.installed-$(if $(GPU),gpu,cpu)
DEMO   ?= demo_out

.PHONY: install demo test clean

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

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache
