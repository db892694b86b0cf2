# Shortcuts for the commands of the README; each target works on a fresh clone after `make setup`.
PY ?= .venv/bin/python

.PHONY: setup test lint bench report

setup:  ## the README's install: a venv with the CPU torch, the package editable, dev and LLM extras
	python3 -m venv .venv && .venv/bin/pip install -q torch==2.13.0 -e ".[dev,llm]"

test:  ## the README's test command
	$(PY) -m pytest -q

lint:  ## ruff (pyflakes, pycodestyle, isort, bugbear; config in pyproject.toml) and mypy
	.venv/bin/ruff check .
	$(PY) -m mypy

bench:  ## the solver benchmarks against pymdptoolbox (pytest-benchmark)
	$(PY) -m pytest -q benchmarks/test_bench_solvers.py --benchmark-only

report:  ## the two default benchmark reports: reports/frozen-lake/ and reports/bandits/
	.venv/bin/mdpalign bench frozen-lake
	.venv/bin/mdpalign bench bandits
