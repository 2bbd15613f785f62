# The two commands of the README:
#   make demo   set up .venv if needed, then train and evaluate on the demo data
#   make test   set up .venv if needed, then run the test suite
PYTHON_VENV := .venv/bin/python

.PHONY: setup test demo

setup:
	bash tools/setup_env.sh

test: setup
	$(PYTHON_VENV) -m pytest tests

demo: setup
	bash tools/run_demo.sh
