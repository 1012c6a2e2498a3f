# paybridge: the two commands a new user needs are `make demo` and `make test`.
# Both install missing Debian packages first (scripts/install-deps).
BUILD      ?= build
BUILD_ASAN ?= build-asan
JOBS       ?= 2
DEMO_ARGS  ?= --duration 30

.PHONY: all deps build asan test test-unit test-asan demo bench clean format

all: build

deps:
	@scripts/install-deps

build: deps
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	@cmake --build $(BUILD) -j$(JOBS)

asan: deps
	@cmake -S . -B $(BUILD_ASAN) -DCMAKE_BUILD_TYPE=Debug -DPB_SANITIZE=ON >/dev/null
	@cmake --build $(BUILD_ASAN) -j$(JOBS)

# The whole suite: every test in the release build, then the unit tests again
# under AddressSanitizer + UBSan.
test: build asan
	@cd $(BUILD) && ctest --output-on-failure -j$(JOBS)
	@cd $(BUILD_ASAN) && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
		ctest --output-on-failure -j$(JOBS) -L unit

test-unit: build
	@cd $(BUILD) && ctest --output-on-failure -j$(JOBS) -L unit

demo: build
	@./$(BUILD)/paybridge demo --fresh $(DEMO_ARGS)

bench: build
	@bench/run.sh $(BUILD)

format:
	@clang-format -i $$(git ls-files '*.c' '*.h')

clean:
	rm -rf $(BUILD) $(BUILD_ASAN)
