# The two set-up commands of the README:
#   make run    install, build the op and train the main job on its built-in synthetic data
#   make test   install, build the op and run the test suite
PYTHON ?= python3
PIP := $(PYTHON) -m pip
RUN_DIR ?= runs/default

.PHONY: install install-test run test test-fast cuda-object sanitize bench clean

install:
	$(PIP) install -q -r requirements.txt
	$(PIP) install -q --no-build-isolation -e .

install-test: install
	$(PIP) install -q --no-build-isolation -e ".[test]"

run: install
	$(PYTHON) -m memrec_tf.app.cli train --output $(RUN_DIR)

# Compiles the CUDA kernels to an object file whenever nvcc is present, so a
# change that breaks the GPU build fails here even without a GPU.
cuda-object:
	@if command -v nvcc >/dev/null 2>&1; then \
		echo "nvcc found: compiling the CUDA kernels"; \
		$(PYTHON) custom_ops/build.py --cuda-object-only build/cuda/memrec_kernels_gpu.o; \
	else echo "nvcc not found: CUDA compile check skipped"; fi

test: install-test cuda-object
	$(PYTHON) -m pytest -q tests

sanitize: install-test
	bash tests/sanitize/run.sh

bench: install
	$(PYTHON) benchmarks/bench_lookup.py

clean:
	rm -rf build memrec_tf/_memrec_ops*.so *.egg-info
