# brix — thin wrapper over CMake. The two commands users rely on are
# `make run` and `make test`; both install what they need first (scripts/setup).
BUILD       ?= build
ASAN_BUILD  ?= build/asan
JOBS        ?= $(shell nproc)
CONFIG      ?= examples/engine-sim.yaml
PORT        ?= 8080

.PHONY: all setup build build-asan run test bench format clean

all: build

setup:
	@scripts/setup

# Optimised build with debug info: build/brix (used by run and bench).
build:
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	@cmake --build $(BUILD) -j $(JOBS)

# ASan + UBSan build used by the test suite.
build-asan:
	@cmake -S . -B $(ASAN_BUILD) -DCMAKE_BUILD_TYPE=Debug -DBRIX_SANITIZE=ON >/dev/null
	@cmake --build $(ASAN_BUILD) -j $(JOBS)

# Until the gateway and `brix up` land, `make run` serves the OpenAI API from
# one simulated engine on 127.0.0.1:$(PORT).
run: setup build
	./$(BUILD)/brix engine-sim --config $(CONFIG) --port $(PORT)

test: setup build-asan
	cd $(ASAN_BUILD) && ctest --output-on-failure -j $(JOBS) --timeout 300

bench: setup build
	bench/run-all

format:
	@git ls-files '*.c' '*.h' | xargs clang-format -i

clean:
	rm -rf $(BUILD)
