# The README's two commands: `make demo` and `make test`. Both set up .venv on first use.
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export GLIBC_TUNABLES ?= glibc.malloc.hugetlb=1

.PHONY: install demo test bench clean

$(STAMP): pyproject.toml
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	# A bare `torch` requirement would pull the newest CUDA build (GBs); take the pinned CPU build when none imports.
	$(VPY) -c "import torch" 2>/dev/null || $(VPY) -m pip install -q torch==2.13.0
	$(VPY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VPY) -m mambaseg demo

test: $(STAMP)
	$(VPY) -m pytest -q -p no:cacheprovider

bench: $(STAMP)
	$(VPY) benchmarks/scan.py

clean:
	rm -rf $(VENV) build src/*.egg-info
