# Concord: build, test, benchmark, demo. `make demo` and `make test` work on a fresh Debian machine.
SWIFT      ?= swift
SUDO       := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Release builds for benchmarks and the demo: optimized, whole-module (SwiftPM's release default).
# Architecture flags stay out of Package.swift so the library remains usable as a dependency.
# ARCH is the target CPU of the release builds (`make build ARCH=...`): x86-64-v3 (AVX2, FMA, F16C: Intel
# since Haswell, AMD since Excavator) vectorizes the kernels and converts float16 in hardware; `native`
# tunes for this machine; x86-64 runs anywhere (float16 then costs a library call per element); empty
# passes no flag (the default off x86-64). `-Xcc -march` reaches both clang and swiftc (`-Xswiftc
# -target-cpu x86-64-v3` is rejected). A binary run on a CPU without what it was built for exits with one
# line naming the missing features (Sources/CConcordCPU). Measurements: docs/algorithms.md, Reduce kernels.
ARCH       ?= $(if $(filter x86_64 amd64,$(shell uname -m)),x86-64-v3,)
ARCH_FLAGS := $(if $(ARCH),-Xcc -march=$(ARCH))
# SWIFT_SCRATCH=DIR builds the release products in DIR instead of .build (e.g. to run `make compare` beside
# another build).
SWIFT_SCRATCH ?=
RELEASE    := -c release $(ARCH_FLAGS) $(if $(SWIFT_SCRATCH),--scratch-path $(SWIFT_SCRATCH))
BIN         = $(shell $(SWIFT) build $(RELEASE) --show-bin-path)
TEST_LIMIT ?= 900

.PHONY: all deps build test lab bench bench-hetero bench-train demo compare compare-deps clean

all: build

# libuv and pkg-config from Debian, only when they are missing.
deps:
	@if command -v pkg-config >/dev/null 2>&1 && pkg-config --exists libuv; then :; else \
	  echo "installing libuv1-dev and pkg-config"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq libuv1-dev pkg-config; \
	fi

build: deps
	$(SWIFT) build $(RELEASE)

# Unit, transport, launcher and multi-process tests; bounded in time, nothing left running. Then the labs
# (Tests/lab), hosts made of network namespaces, when root (they say "skipped" otherwise): discovery, and
# the capacity-aware ring on one 20 Mbit/s link among 100 Mbit/s ones (correctness only: the bench exits
# non-zero on a wrong or non-identical value; its timings are for `make bench-hetero`).
test: deps
	$(SWIFT) build --build-tests
	timeout --kill-after=30 $(TEST_LIMIT) $(SWIFT) test --skip-build
	CONCORD_BIN=$$($(SWIFT) build --show-bin-path) timeout --kill-after=30 600 bash Tests/lab/discovery-lab.sh
	timeout --kill-after=30 300 bash Tests/lab/hetero-lab.sh --timeout 240 -- $$($(SWIFT) build --show-bin-path)/concord-bench hetero -b 256K -e 256K -n 1

# The discovery lab alone, on the release build.
lab: build
	CONCORD_BIN=$(BIN) bash Tests/lab/discovery-lab.sh

# The performance report: the kernels against memcpy, then Concord next to the raw TCP ring, N = 2 and 4,
# 4 KiB ... 64 MiB.
bench: build
	$(BIN)/concord-bench kernels
	$(BIN)/concord run -n 2 -- $(BIN)/concord-bench allreduce -b 4K -e 64M -f 4 -n 20 -w 5 -c 1 --raw-ring --raw-ring-cold
	$(BIN)/concord run -n 4 -- $(BIN)/concord-bench allreduce -b 4K -e 64M -f 4 -n 20 -w 5 -c 1 --raw-ring --raw-ring-cold

# The main job on built-in data: 4 local ranks find each other by discovery on this host, train the digit
# classifier data-parallel (concord-train), classify the test set together and print the summary.
demo: build
	$(BIN)/concord run -n 4 --discover --world-size 4 --job concord-demo -- $(BIN)/concord-train --evaluate

# Capacity-aware rings on uneven links (root: network namespaces): one host at 20 Mbit/s, three at 100,
# equal chunks against weighted chunks and weighted + int8 on the slow links, next to the ideal.
bench-hetero: build
	$(BIN)/concord-bench hetero -b 1M -e 16M -f 4 -n 3

# Data-parallel scaling of concord-train: images/s for 1, 2 and 4 ranks and every compression, one table.
bench-train: build
	$(BIN)/concord-bench train --ranks 1,2,4 --compressions none,fp16,bf16,int8

# Concord next to Gloo and Open MPI on this machine: installs them when missing, builds the baselines in
# Benchmarks/Baselines, runs everything interleaved ROUNDS times and prints one table per N; the JSON,
# tables, SVG plot and logs go to COMPARE_OUT. Not part of `make test` (about 3 minutes at ROUNDS=3).
ROUNDS        ?= 3
COMPARE_OUT   ?= compare-results
BASELINES     := Benchmarks/Baselines
BASELINES_BIN := .build-baselines

compare: build compare-deps $(BASELINES_BIN)/gloo_allreduce $(BASELINES_BIN)/mpi_allreduce
	python3 $(BASELINES)/compare.py --bin $(BIN) --baselines $(BASELINES_BIN) --rounds $(ROUNDS) --out $(COMPARE_OUT)

# Gloo, Open MPI and a C++ compiler from Debian, only the packages that are missing.
compare-deps: deps
	@missing=; for p in libgloo-dev openmpi-bin libopenmpi-dev g++; do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing$$missing"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq $$missing; \
	fi

# Debian's Gloo ships no pkg-config file: link it by name.
$(BASELINES_BIN)/gloo_allreduce: $(BASELINES)/gloo_allreduce.cc | compare-deps
	@mkdir -p $(@D)
	g++ -O2 -std=c++17 -o $@ $< -lgloo -lpthread

$(BASELINES_BIN)/mpi_allreduce: $(BASELINES)/mpi_allreduce.c | compare-deps
	@mkdir -p $(@D)
	mpicc -O2 -o $@ $<

clean:
	rm -rf .build
