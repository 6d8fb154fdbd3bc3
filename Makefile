# The interface of this project: make test, make rehearse, make bench, make lint.
# Every target installs what it needs itself (a virtualenv, and PostgreSQL 15
# server binaries with apt when they are missing), as root or as a normal user.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PG_MAJOR ?= 15
PG_BINDIR ?= /usr/lib/postgresql/$(PG_MAJOR)/bin
export PG_BINDIR
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)

.PHONY: test test-slow rehearse lint bench bench-replicas soak expected postgres venv clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,lint]'
	touch $@

venv: $(BIN)/.installed

# PostgreSQL server binaries and psql (Debian postgresql-15, contrib included), its plpgsql_check
# (make lint) and pg_cron (retention --schedule) extensions, and promtool (Debian prometheus) for the
# alert-rule tests.
PG_EXTDIR ?= /usr/share/postgresql/$(PG_MAJOR)/extension
postgres:
	@if [ ! -x "$(PG_BINDIR)/initdb" ] || ! command -v psql >/dev/null || ! command -v promtool >/dev/null \
		    || [ ! -f "$(PG_EXTDIR)/plpgsql_check.control" ] || [ ! -f "$(PG_EXTDIR)/pg_cron.control" ]; then \
	  echo "installing postgresql-$(PG_MAJOR), plpgsql_check, pg_cron and prometheus (promtool) with apt"; \
	  $(SUDO) apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends \
	    postgresql-$(PG_MAJOR) postgresql-client-$(PG_MAJOR) postgresql-$(PG_MAJOR)-plpgsql-check \
	    postgresql-$(PG_MAJOR)-cron \
	    util-linux prometheus; \
	fi

## The test suite, on throw-away PostgreSQL servers it starts itself: one per pytest-xdist worker (a worker
## per core; TEST_WORKERS=0 runs in one process), the 15 slowest tests listed at the end. Tests marked slow
## (their own servers, rehearsals, the soak, pgbench, property searches, fault injection) are `make test-slow`;
## CI (.ci/run) runs both, then the lint.
TEST_WORKERS ?= auto
test: venv postgres
	$(BIN)/pytest -n $(TEST_WORKERS) -m "not slow" --durations=15

test-slow: venv postgres
	$(BIN)/pytest -n $(TEST_WORKERS) -m slow --durations=15

## The main job: rehearse the rollout on a throw-away database and write the evidence bundle (with its
## timeline plot: matplotlib, the bench extra). STANDBY=1 adds a hot standby and what its readers saw.
rehearse: venv postgres
	@$(BIN)/python -c "import matplotlib" 2>/dev/null || $(BIN)/pip install -q -e '.[bench]'
	$(BIN)/reserve rehearse $(if $(STANDBY),--standby)

## Regenerate reserve/schema/expected/ (the catalog each revision must produce) after changing a revision.
expected: venv postgres
	$(BIN)/python -m tools.expected

## Live traffic: workers confirm holds while the chain runs upgrade head, downgrade -1, upgrade head.
## Writes artifacts/soak.json; exit 1 if an invariant broke (overlap, lost row, missing evidence, unexpected error).
## SOAK_HOSTILE=1: every session REPEATABLE READ by default, FORCE RLS on allocations, a deploy role that is not a
## superuser runs alembic (artifacts/soak-hostile.json).
SOAK_ROWS ?= 100000
SOAK_WORKERS ?= 4
SOAK_METHOD ?= online
soak: venv postgres
	@mkdir -p artifacts
	$(BIN)/python -m tools.soak --workers $(SOAK_WORKERS) --rows $(SOAK_ROWS) --phase-seconds 10 -x swap_method=$(SOAK_METHOD) \
	  $(if $(SOAK_HOSTILE),--hostile-sessions) --out artifacts/soak$(if $(SOAK_HOSTILE),-hostile).json

## Benchmarks at scale: the swap's lock hold, overlap probes, confirm throughput.
## Writes bench/results/<timestamp>.json, bench/results/latest.json and docs/BENCHMARKS.md. ROWS=… to change the size.
ROWS ?= 1000000
bench: venv postgres
	@$(BIN)/python -c "import matplotlib" 2>/dev/null || $(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python -m bench.run --rows $(ROWS)
	$(BIN)/python -m bench.replicas --rows $(ROWS)

## The swap as a hot standby sees it, locked and online at 100k and ROWS: the primary's hold, the longest
## standby read, replay lag, cancellations. Writes bench/results/replicas-<timestamp>.json and its part of
## docs/BENCHMARKS.md.
bench-replicas: venv postgres
	$(BIN)/python -m bench.replicas --rows $(ROWS)

## Ruff on the code; squawk on each revision's offline SQL, one file per step (silenced rules: tools/lint_sql.py);
## plpgsql_check on every shipped function version, at each revision of the chain (tools/lint_plpgsql.py).
lint: venv postgres
	$(BIN)/ruff check reserve alembic tests bench tools
	$(BIN)/python -m tools.lint_sql
	$(BIN)/python -m tools.lint_plpgsql

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
