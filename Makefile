# Two commands on a fresh machine: `make run` and `make test`. Everything else they need, they install.
PY := .venv/bin/python
CITEQA := .venv/bin/citeqa
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install browser run ingest test eval bench load lint format clean reader

install: .venv/.installed

# torch comes first and pinned: the CPU build on this machine's disk, not a multi-GB CUDA download.
.venv/.installed: pyproject.toml
	python3 -m venv .venv
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

# Debian's Chromium for the browser tests (Playwright's own browser download cannot run offline).
browser:
	@test -x /usr/bin/chromium || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)

ingest: install
	$(CITEQA) ingest

run: install ingest
	$(CITEQA) serve --host $(HOST) --port $(PORT)

# The eval gate runs inside pytest (tests/test_evals.py).
test: install browser
	$(PY) -m pytest -q --durations=12

eval: install
	$(CITEQA) eval --squad --natural

bench: install
	$(PY) -m bench.run

load: install
	$(PY) -m bench.load

# Train the reader (training/train.py) from the open QA files in READER_DATA (models/reader/README.md lists them)
# and write models/reader/. The committed model is what `make run` and `make test` use: this only retrains.
reader: install
	@test -n "$(READER_DATA)" || { echo "usage: make reader READER_DATA=<folder of the QA files in models/reader/README.md>" >&2; exit 2; }
	$(PY) -m training.train --data $(READER_DATA)

lint: install
	.venv/bin/ruff check app ingest evals training tests bench
	.venv/bin/ruff format --check app ingest evals training tests bench
	.venv/bin/mypy app ingest evals training

format: install
	.venv/bin/ruff check --fix app ingest evals training tests bench
	.venv/bin/ruff format app ingest evals training tests bench

clean:
	rm -rf .citeqa evals/reports .pytest_cache .mypy_cache .ruff_cache
