# The two set-up commands of the README:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# the dataset `make demo` imports: GROCERY=..., else SHOPSEARCH_DEMO_DATASET, else the shared copy
GROCERY ?= $(or $(SHOPSEARCH_DEMO_DATASET),../shared/datasets/grocerystore)
export HF_HUB_OFFLINE ?= 1

.PHONY: demo test venv browser nginx clean

$(BIN)/shopsearch: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch/torchvision first, pinned: served from this machine's local wheel cache
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[test,ray]'
	touch $@

venv: $(BIN)/shopsearch

# Import + index the Grocery Store catalogue, then serve the web app on http://127.0.0.1:8000/
demo: venv nginx
	$(BIN)/shopsearch --data-dir var demo --dataset $(GROCERY)

browser:
	@bash scripts/ensure-browser.sh

nginx:
	@bash scripts/ensure-nginx.sh

# The whole test suite (SQLite + PostgreSQL at 127.0.0.1:5432, headless Chromium, nginx).
test: venv browser nginx
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) var .pytest_cache
