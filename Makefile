# composefs-py: the two commands a newcomer needs are `make run` and `make test`.
# Both bootstrap first (scripts/bootstrap.sh: system packages, libcomposefs,
# .venv); the bootstrap is idempotent and quiet when there is nothing to do.

VENV := .venv
PY := $(VENV)/bin/python
SAMPLE := tests/data/sample.dump
IMAGE := build/sample.cfs

.PHONY: deps run test lint bench fuzz-deps fuzz fuzz-check fuzz-peers

deps:
	@scripts/bootstrap.sh

# build prints the image digest; dump lists the image.
run: deps
	@mkdir -p build
	$(VENV)/bin/composefs-py build $(SAMPLE) -o $(IMAGE)
	$(VENV)/bin/composefs-py dump $(IMAGE)

lint: deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

test: deps
	$(PY) -m pytest -q
	$(MAKE) --no-print-directory lint

# composefs-py against its peers: TOC -> image against podman's path (built on
# demand into .deps/cstorage by ../shared/peers/containers-storage/setup.sh),
# sandbox against native, layer import against tar + mkcomposefs; the table
# goes to stdout and build/bench.json.  BENCH_ARGS="--only toc --repeat 3".
bench: deps
	$(PY) -m benchmarks $(BENCH_ARGS)

# Coverage-guided fuzzing (atheris) over an ASan+UBSan build of libcomposefs:
# `make fuzz FUZZ_TARGET=toc FUZZ_SECONDS=600`, libFuzzer options in FUZZ_ARGS.
FUZZ_TARGET ?= all
FUZZ_SECONDS ?= 60
FUZZ_JOBS ?= 2
fuzz-deps: deps
	@scripts/build-asan.sh
fuzz: fuzz-deps
	$(PY) -m fuzz run --target $(FUZZ_TARGET) --seconds $(FUZZ_SECONDS) --jobs $(FUZZ_JOBS) $(if $(FUZZ_ARGS),-- $(FUZZ_ARGS))

# The differential targets' peers: podman's TOC parser and dump as a long-lived
# process for toc_diff (fuzz/peers/build-serve.sh, from the Go tree that
# ../shared/peers/containers-storage/setup.sh unpacks into .deps/cstorage), and
# mkcomposefs's unmodified main as a fork server for both differential targets
# (fuzz/peers/build-mkcomposefs-serve.sh, from .deps/src against .deps/prefix);
# dumpfile_diff needs only the latter.  `make fuzz FUZZ_TARGET=toc_diff`.
fuzz-peers: deps
	fuzz/peers/build-mkcomposefs-serve.sh
	@[ -d .deps/cstorage/gopath ] || ../shared/peers/containers-storage/setup.sh .deps/cstorage
	fuzz/peers/build-serve.sh

# The ClusterFuzzLite/OSS-Fuzz build (.clusterfuzzlite/build.sh) run locally
# with stand-ins for their container (fuzz/oss-fuzz-check.sh), then every
# fuzzer it made for FUZZ_CHECK_SECONDS (default 5) each; about a minute.
fuzz-check: fuzz-deps
	fuzz/oss-fuzz-check.sh
