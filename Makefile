# The two set-up commands of the README:
#   make run    install, build the op and train the main job on its built-in synthetic data
#   make test   install, build the op and run the test suite (every test, ~10 minutes on 2 cores)
# While working:
#   make test-fast   the tests not marked slow (under 2 minutes); builds the op only if it is missing
PYTHON ?= python3
PIP := $(PYTHON) -m pip
RUN_DIR ?= runs/default

.PHONY: install install-test run test test-fast op-library cuda-object sanitize bench clean

install:
	$(PIP) install -q -r requirements.txt
	$(PIP) install -q --no-build-isolation -e .

install-test: install
	$(PIP) install -q --no-build-isolation -e ".[test]"

run: install
	$(PYTHON) -m memrec_cli train --output $(RUN_DIR)

# Compiles the CUDA kernels to an object file whenever nvcc is present, so a
# change that breaks the GPU build fails here even without a GPU. It takes
# about 3.5 minutes on 2 cores; it says so, and how long it took.
CUDA_OBJECT := build/cuda/memrec_kernels_gpu.o
cuda-object:
	@if command -v nvcc >/dev/null 2>&1; then \
		echo "cuda-object: compiling the CUDA kernels with $$(command -v nvcc) into $(CUDA_OBJECT)" \
			"(about 3-4 minutes on 2 cores; log: build/cuda/nvcc.log)"; \
		start=$$(date +%s); status=0; \
		$(PYTHON) custom_ops/build.py --cuda-object-only $(CUDA_OBJECT) || status=$$?; \
		elapsed=$$(( $$(date +%s) - start )); \
		if [ $$status -eq 0 ]; then echo "cuda-object: compiled in $${elapsed} s"; \
		else echo "cuda-object: FAILED (exit $$status) after $${elapsed} s"; exit $$status; fi; \
	else echo "cuda-object: nvcc not found: CUDA compile check skipped"; fi

# Every test, the 15 slowest listed at the end.
test: install-test cuda-object
	$(PYTHON) -m pytest -q --durations=15 tests

# The tests not marked slow (see tests/conftest.py); no install step when the
# op library and its checksum file are already built.
test-fast: op-library
	$(PYTHON) -m pytest -q -m "not slow" --durations=10 tests

op-library:
	@ls memrec_tf/_memrec_ops*.so memrec_tf/_memrec_ops*.so.sha256 >/dev/null 2>&1 \
		|| $(MAKE) install-test

sanitize: install-test
	bash tests/sanitize/run.sh

bench: install
	$(PYTHON) benchmarks/bench_lookup.py

clean:
	rm -rf build memrec_tf/_memrec_ops*.so memrec_tf/_memrec_ops*.so.sha256 *.egg-info
