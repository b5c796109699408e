# Two commands for a fresh machine: `make demo` and `make test`.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install browser demo lint host-envs gpu-wheels test test-fast clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	$(PY) -m pip install --quiet --no-deps clip-anytorch==2.6.0
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/traintrain demo --out demo_output

# The browser tests drive Debian's Chromium (Playwright's own browser download is not used).
browser:
	@command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

# vermin: no syntax or standard library newer than the Web-UIs' Python 3.10 (no 3.10 interpreter here).
lint: $(STAMP)
	$(VENV)/bin/ruff check src
	$(VENV)/bin/mypy
	$(VENV)/bin/vermin -q -t=3.10- --violations --no-tips --eval-annotations src

# The Web-UIs' pinned libraries in .host-envs/ (tests/host_pins/), for tests/test_host_pins.py; its fixture
# builds them too when missing (about 4 minutes each, once).
host-envs: $(STAMP)
	cd tests && ../$(PY) -c 'import host_envs; [host_envs.host_python(h) for h in host_envs.HOSTS]'

# For benchmarks/gpu_suite.sh on a lent GPU machine (no network there): the libraries its image may lack, as
# wheels at the versions installed here, never torch (the image's CUDA build stays).
GPU_WHEELS := diffusers|accelerate|peft|safetensors|huggingface.hub|transformers|tokenizers|hf.xet|psutil
gpu-wheels: $(STAMP)
	rm -rf .gpu_wheels
	$(PY) -m pip download --quiet --no-deps -d .gpu_wheels $$($(PY) -m pip freeze | grep -iE '^($(GPU_WHEELS))==')

# One test worker per core (tests/conftest.py gives each one CPU thread); a file stays on one worker,
# so its module fixtures (a trained model, a served app) are built once.
PYTEST := $(PY) -m pytest -q -n auto --dist loadfile --durations=15

test: lint browser
	$(PYTEST)

test-fast: lint
	$(PYTEST) -m "not slow"

clean:
	rm -rf $(VENV) .host-envs demo_output output
