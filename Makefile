# One entry point for developers and CI (CI runs `.ci/run`, which calls these targets).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: system install toxiproxy check lint typecheck format test test-contracts test-local test-secure test-containers test-unit images up kafka postgres schemas bench soak clean

system:  ## the Debian packages (Java, Maven, PostgreSQL, kcat, venv), installed when missing (root)
	bash scripts/system-packages.sh

$(STAMP): pyproject.toml | system
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: system $(STAMP)  ## Python packages into .venv, Kafka jars into the cache
	$(BIN)/esctl kafka install

check: $(STAMP)  ## ruff (lint + format), mypy --strict, and the import contracts (lint-imports)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: install  ## the whole suite: the contracts, the local tier, the secure-broker tier, the container tier
	$(MAKE) test-contracts
	$(MAKE) test-local
	$(MAKE) test-secure
	$(MAKE) test-containers

test-contracts: install  ## the alert rules (promtool test rules) and the AsyncAPI document (@asyncapi/cli validate)
	bash deploy/prometheus/check.sh
	bash scripts/asyncapi-validate.sh schemas/asyncapi.yaml

toxiproxy:  ## toxiproxy-server (the network fault tests) `go install`ed into the cache, once
	bash scripts/toxiproxy.sh >/dev/null

test-local: install toxiproxy  ## unit, contract, integration, e2e, faults against a local broker and PostgreSQL
	$(BIN)/esctl postgres install
	ESCTL_TEST_INFRA=local $(BIN)/pytest --ignore=tests/containers

test-secure: install  ## the e2e tier (less the two long SIGKILL runs) and the Kafka security tests on a `--secure` local broker
	$(BIN)/esctl postgres install
	ESCTL_TEST_INFRA=local ESCTL_TEST_KAFKA_SECURE=1 $(BIN)/pytest -m "not crash_soak" tests/e2e tests/integration/test_kafka_security.py

test-containers: install  ## testcontainers tier + the compose stack (Docker, or podman + local images)
	bash containers/tier.sh $(BIN)/pytest tests/containers

images: install  ## build (or reuse) the local container images with podman
	bash containers/build-images.sh

test-unit: $(STAMP)
	$(BIN)/pytest tests/unit

up: install  ## Kafka + the four services + SQLite read store, in the foreground
	$(BIN)/esctl up

bench: install  ## benchmarks against raw Kafka and the eventsourcing library -> bench/RESULTS.md
	$(BIN)/python -m bench.run

soak: install  ## 30 minutes of steady mixed traffic on the whole system -> the soak section of bench/RESULTS.md
	$(BIN)/python -m bench.soak

schemas: $(STAMP)  ## regenerate the committed contract: command JSON Schemas, the AsyncAPI document
	$(BIN)/esctl schema export --out schemas/commands
	$(BIN)/esctl schema asyncapi --out schemas/asyncapi.yaml

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
