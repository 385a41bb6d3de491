# Concord: build, test, benchmark, demo. `make demo` and `make test` work on a fresh Debian machine.
SWIFT      ?= swift
SUDO       := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Release builds for benchmarks and the demo: optimized, whole-module (SwiftPM's release default).
# Architecture flags stay out of Package.swift so the library remains usable as a dependency.
RELEASE    := -c release
BIN         = $(shell $(SWIFT) build $(RELEASE) --show-bin-path)
TEST_LIMIT ?= 900

.PHONY: all deps build test bench demo clean

all: build

# libuv and pkg-config from Debian, only when they are missing.
deps:
	@if command -v pkg-config >/dev/null 2>&1 && pkg-config --exists libuv; then :; else \
	  echo "installing libuv1-dev and pkg-config"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq libuv1-dev pkg-config; \
	fi

build: deps
	$(SWIFT) build $(RELEASE)

# Unit, transport, launcher and multi-process tests; bounded in time, nothing left running.
test: deps
	$(SWIFT) build --build-tests
	timeout --kill-after=30 $(TEST_LIMIT) $(SWIFT) test --skip-build

# The performance report: Concord next to the raw TCP ring, N = 2 and 4, 4 KiB ... 64 MiB.
bench: build
	$(BIN)/concord run -n 2 -- $(BIN)/concord-bench allreduce -b 4K -e 64M -f 4 -n 20 -w 5 -c 1 --raw-ring --raw-ring-cold
	$(BIN)/concord run -n 4 -- $(BIN)/concord-bench allreduce -b 4K -e 64M -f 4 -n 20 -w 5 -c 1 --raw-ring --raw-ring-cold

# The main job on built-in data: 4 local ranks, a checked all-reduce sweep with the bandwidth table.
demo: build
	$(BIN)/concord run -n 4 -- $(BIN)/concord-bench allreduce -b 4 -e 64M -f 4 -n 10 -w 2 -c 1

clean:
	rm -rf .build
