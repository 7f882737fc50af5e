# The two commands of the README: `make tune` (the main job) and `make test`.
PYTHON ?= python3

.PHONY: setup tune test bench-smoke

setup:
	bash scripts/setup.sh

tune: setup
	$(PYTHON) -m fusedbn.cli tune --out runs/tune

bench-smoke: setup
	$(PYTHON) -m fusedbn.cli bench --smoke --out runs/bench-smoke

test:
	bash scripts/test.sh
