# ot-gateway: two commands on a fresh machine — `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PKGS   := gateway connectors inventory simulator
# Debian packages the tests talk to (real peers, no fakes).
APT_PACKAGES := mbpoll victoria-metrics chromium mosquitto mosquitto-clients
APT_BINARIES := mbpoll victoria-metrics chromium mosquitto mosquitto_sub

.PHONY: demo test lint audit lock unit bench deps-system clean

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c requirements.lock -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/ot-gateway demo

deps-system: export PATH := $(PATH):/usr/sbin:/sbin
deps-system:
	@missing=""; for b in $(APT_BINARIES); do command -v $$b >/dev/null 2>&1 || missing="$$missing $$b"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages for the tests:$$missing"; \
	  if [ "$$(id -u)" != 0 ]; then echo "ERROR: need root to apt-get install $(APT_PACKAGES) (missing:$$missing)"; exit 1; fi; \
	  (apt-get install -y -q $(APT_PACKAGES) || (apt-get update -q && apt-get install -y -q $(APT_PACKAGES))) >/dev/null \
	    || { echo "ERROR: apt-get install $(APT_PACKAGES) failed"; exit 1; }; \
	fi; \
	for b in $(APT_BINARIES); do command -v $$b >/dev/null 2>&1 || { echo "ERROR: $$b still missing"; exit 1; }; done

lint: $(STAMP)
	$(VENV)/bin/ruff check $(PKGS) tests bench
	$(VENV)/bin/mypy --strict $(PKGS)
	$(VENV)/bin/bandit -q -r $(PKGS) --severity-level high

# S14 supply chain: known vulnerabilities in the locked dependencies. Needs PyPI's per-release
# JSON API or OSV (api.osv.dev); --strict fails when a package could not be checked, so an
# unreachable advisory service is a failure, never a silent pass.
audit: $(STAMP)
	$(VENV)/bin/pip-audit --strict --no-deps --disable-pip -r requirements.lock
	$(VENV)/bin/bandit -q -r $(PKGS) -ll

# Re-pin every dependency (run after changing pyproject.toml, then commit requirements.lock).
lock: $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip freeze --exclude-editable | grep -v '^ot-gateway' > requirements.lock

NODE_OPCUA := tests/interop/node-opcua/node_modules/.installed

$(NODE_OPCUA): tests/interop/node-opcua/package-lock.json
	@command -v npm >/dev/null 2>&1 || { echo "ERROR: npm (Node.js >= 18) is needed for the OPC UA interop test"; exit 1; }
	npm ci --prefix tests/interop/node-opcua --no-audit --no-fund --loglevel=error
	touch $(NODE_OPCUA)

test: $(STAMP) deps-system lint $(NODE_OPCUA)
	$(VENV)/bin/pytest

bench: $(STAMP) deps-system
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
