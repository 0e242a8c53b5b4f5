# The two commands a newcomer needs are `make demo` and `make test`; everything else is here for daily work.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
UV_VERSION := 0.13.8

.PHONY: install demo up test lint schemas bench lock clean compose-up compose-down deploy-check

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --disable-pip-version-check uv==$(UV_VERSION)
	@$(VENV)/bin/uv pip sync -q --python $(PY) requirements.lock
	@$(VENV)/bin/uv pip install -q --python $(PY) --no-deps -C editable_mode=compat -e .
	@touch $@

demo: install ## start the stack, run the scenario, print it, stop
	@$(VENV)/bin/collabkare demo

up: install ## the local stack in the foreground until Ctrl-C
	@$(VENV)/bin/collabkare stack up

test: install ## the whole suite against real PostgreSQL, Kafka-protocol broker and SMTP
	@bash tests/browser/install-chromium.sh
	@$(PY) -m pytest -q

lint: install ## ruff + mypy, both clean
	@$(VENV)/bin/ruff check .
	@$(VENV)/bin/ruff format --check .
	@$(VENV)/bin/mypy

schemas: install ## regenerate the JSON Schema, AsyncAPI and OpenAPI documents (refuses incompatible changes)
	@$(PY) -m schemas.generate
	@$(PY) -m collabkare.docs

bench: install ## benchmarks against the local stack; prints tables, writes var/bench/*.json
	@$(PY) -m bench $(BENCH)

compose-up: ## the whole system in Docker: Kafka (KRaft), PostgreSQL, Mailpit, migrations, the three services
	docker compose up --build --detach
	@echo "connections :8001  invitations :8002  notifier :8003  mail http://localhost:8025"

compose-down: ## stop it and delete its data
	docker compose down --volumes

deploy-check: ## render and validate deploy/ offline (make test runs it too, via tests/deploy)
	@bash deploy/validate.sh

lock: ## re-resolve requirements.lock from pyproject.toml
	@$(VENV)/bin/uv pip compile -q pyproject.toml --extra local --extra dev --python-version 3.11 -o requirements.lock

clean:
	rm -rf $(VENV) .venv-deploy .pytest_cache .mypy_cache .ruff_cache var
