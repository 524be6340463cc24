# The two commands a newcomer needs: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SETTINGS ?= settings/demo.yaml

.PHONY: run test lint check bench schema clean mosquitto

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[embedded,test,dev]'
	touch $(STAMP)

mosquitto:
	@command -v mosquitto >/dev/null 2>&1 || test -x /usr/sbin/mosquitto || { \
	  echo "installing mosquitto with apt-get"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq mosquitto >/dev/null; }

SIMULATOR := $(BIN)/python -m drivers.haltian.simulator --broker mqtt://127.0.0.1:1883 \
	--integration sim-integration --api-key sim-key --devices 8 --rate 10 --malformed 0.01 --seed 7 --speed 60

EB_FAKE := $(BIN)/python -m drivers.empathic_building.fake_server --port 8089 --simulate 10

run: $(STAMP)
	@echo "Demo site: watch the topics with"
	@echo "  $(BIN)/python -c \"import paho.mqtt.subscribe as s; s.callback(lambda c,u,m: print(m.topic, m.payload.decode()), 'placeos/#', hostname='127.0.0.1')\""
	@$(SIMULATOR) > /dev/null 2>&1 & sim=$$!; \
	  $(EB_FAKE) > /dev/null 2>&1 & eb=$$!; \
	  trap 'kill $$sim $$eb 2>/dev/null' EXIT INT TERM; \
	  $(BIN)/python -m runtime run $(SETTINGS)

test: $(STAMP) mosquitto
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check runtime drivers tests $(wildcard benchmarks)
	$(BIN)/mypy --strict

check: $(STAMP)
	$(BIN)/python -m runtime check $(SETTINGS)

schema: $(STAMP)
	$(BIN)/python -m runtime.schema > settings/schema.json

bench: $(STAMP) mosquitto
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
