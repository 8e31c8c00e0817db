PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install test lint demo serve bench-speed bench-adaptation data clean

$(BIN)/python:
	$(PY) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install --upgrade pip

install: $(BIN)/python constraints.txt
	$(BIN)/pip install "torch==2.13.0"
	$(BIN)/pip install -c constraints.txt -e ".[dev]"

test: install
	bash scripts/services.sh
	$(BIN)/pytest -q

lint: install
	$(BIN)/ruff check spottune tests bench
	$(BIN)/mypy spottune

serve: install
	$(BIN)/spottune serve

demo: install
	$(BIN)/python scripts/demo.py

data: install
	$(BIN)/spottune data prepare

bench-speed: install
	$(BIN)/python bench/speed.py

bench-adaptation: install data
	$(BIN)/python bench/adaptation.py --profile cpu --jobs 2 --fold-order 1,2,0

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
