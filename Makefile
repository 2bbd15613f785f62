# The two commands of the README:
#   make demo   set up .venv if needed, then train and evaluate on the demo data
#   make test   set up .venv if needed, then run the test suite
PYTHON_VENV := .venv/bin/python

.PHONY: setup setup-cuda setup-onedl test test-fast test-onedl demo

setup:
	bash tools/setup_env.sh

# Maintainers: mmcv with CUDA ops for ARCHS (default 8.0;9.0), built and
# checked without a GPU; not part of `make test`.
setup-cuda:
	bash tools/setup_cuda.sh

# Everything, two test processes side by side (pytest-xdist; tests of one
# file stay in one process, see tests/conftest.py).
test: setup
	$(PYTHON_VENV) -m pytest -n 2 --dist loadgroup tests

# The unit tests alone: no interpreter started, no training, no full-size
# model; under 2 minutes.
test-fast: setup
	POOLFORMER_MM_FAST_LANE=1 $(PYTHON_VENV) -m pytest -n 2 \
		-m 'not integration and not slow' tests

# The maintained OpenMMLab fork (onedl-*) in .venv-onedl: the backbone,
# config, engine, entry-point and install tests there; not part of make test.
setup-onedl:
	STACK=onedl bash tools/setup_env.sh

test-onedl: setup-onedl
	.venv-onedl/bin/python -m pytest -n 2 --dist loadgroup tests/test_models \
		tests/test_engine tests/test_install.py tests/test_frameworks.py

demo: setup
	bash tools/run_demo.sh
