# `make demo`: set up .venv and run the demo; `make test`: set up .venv and run the tests.
SHELL := /bin/bash
VENV ?= .venv
# data sets are read from ../shared/data when it exists (this project's machines), else $METASSL_DATA or the cache
DATA ?= $(shell if [ -d ../shared/data ]; then cd ../shared/data && pwd; fi)
export METASSL_DATA := $(or $(DATA),$(METASSL_DATA))

.PHONY: setup demo test bench clean
setup:
	@bash scripts/setup_env.sh

demo:
	@EXTRAS= bash scripts/setup_env.sh
	$(VENV)/bin/metassl demo

test:
	@EXTRAS=test bash scripts/setup_env.sh
	$(VENV)/bin/python -m pytest -p no:cacheprovider

bench: setup
	$(VENV)/bin/python benchmarks/bench_sampling.py

clean:
	rm -rf $(VENV) runs build src/*.egg-info
