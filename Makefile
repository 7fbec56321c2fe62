# make demo       - set up .venv and run the demo (synthetic data -> train -> evaluate -> overlays)
# make test       - set up .venv and run the whole test suite
# make lint       - ruff check and ruff format --check on src, tests and benchmarks (CI runs it)
# make typecheck  - mypy src, settings in pyproject.toml; passes with no error (CI runs it after lint)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
WEAKSEG := $(VENV)/bin/weakseg
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint typecheck setup clean

setup: $(STAMP)

# pip always installs with the pins, so it never swaps in a CUDA torch.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt torch==2.13.0
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev,crf,annotate]'
	touch $(STAMP)

demo: $(STAMP)
	$(WEAKSEG) data synthetic demo_data/synthetic --num-train 400 --num-val 60 --seed 0 --overwrite
	$(WEAKSEG) train configs/pce/synthetic_effnetlite0-v3p_96x96_300.yaml --overwrite
	$(WEAKSEG) predict runs/demo_pce/last.ckpt demo_data/synthetic/images/val_0000.png \
		demo_data/synthetic/images/val_0001.png demo_data/synthetic/images/val_0002.png --out runs/demo_pce/predict
	@echo
	@echo "Demo outputs in runs/demo_pce/:"
	@echo "  metrics.json  per_class_IoU.png  training_curves.png  overlays/  predict/  last.ckpt  best.ckpt  config.yaml"

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

LINT_PATHS := src tests benchmarks

lint: $(STAMP)
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)

typecheck: $(STAMP)
	$(VENV)/bin/mypy src

clean:
	rm -rf runs demo_data .pytest_cache
