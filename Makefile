# Two commands for a fresh machine (README, "Quick start"):
#   make demo   trains vanilla NeRF on the built-in scene (under 3 minutes on 2 CPU cores) and writes pictures
#   make test   runs the test suite
# Both make their own virtual environment in .venv from requirements.txt the first time.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo demo-hashnerf test venv clean

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

demo: venv
	$(PY) 01_nerf.py --quick

demo-hashnerf: venv
	$(PY) 04_hashnerf.py --quick

test: venv
	$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) runs data/builtin
