# One virtual environment for everything; nothing is downloaded at run time.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DATA ?=
OUT ?= demo_out

.PHONY: install test demo bench clean

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest -q

demo: install
	$(PY) -m train.demo --out $(OUT) $(if $(DATA),--data $(DATA),)

clean:
	rm -rf $(VENV) demo_out
