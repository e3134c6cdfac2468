# The two commands of the README: `make demo` and `make test`. Everything else is a helper.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The install stamp is named after the content of pyproject.toml (not its modification time, which a
# fresh clone or a checkout resets): the venv is reinstalled only when the dependencies changed.
PYPROJECT_SHA := $(shell $(PYTHON) -c "import hashlib; print(hashlib.sha256(open('pyproject.toml','rb').read()).hexdigest()[:16])")
STAMP := $(VENV)/.installed-$(PYPROJECT_SHA)
# torch is pinned to the build these machines hold on local disk; see README "Installing".
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
export PREFECT_HOME ?= $(CURDIR)/.prefect
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 180
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup test test-all test-parity test-slow browser demo bench bench-gpu lint format clean server server-stop server-status pools mutate

# pytest exits 5 when a selection collects no tests (e.g. a marker set that is empty on this
# checkout): not a failure of the selection. Any other non-zero status still fails.
ALLOW_EMPTY = || { rc=$$?; [ $$rc -eq 5 ] && echo "no tests selected"; [ $$rc -eq 5 ]; }
# apt-get needs root: sudo when not root.
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)

# Re-install only when the project's dependencies changed (the venv is ~6 GB).
$(STAMP):
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q -e '.[dev]'
	@rm -f $(VENV)/.installed*
	@touch $(STAMP)

setup: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not gpu"

# The parity tests under torch's generic, AVX2 and the machine's own kernels: numerics must hold on any x86 CPU.
test-parity: $(STAMP)
	@for cap in default avx2 native; do \
	  if [ $$cap = native ]; then unset ATEN_CPU_CAPABILITY; else export ATEN_CPU_CAPABILITY=$$cap; fi; \
	  echo "== parity tests, ATEN_CPU_CAPABILITY=$$cap (torch runs $$($(PY) -c 'import torch; print(torch.backends.cpu.get_cpu_capability())'))"; \
	  $(PY) -m pytest -q -p no:cacheprovider -m "parity and not slow and not gpu" || exit 1; \
	done

test-slow: $(STAMP)
	$(PY) -m pytest -q -m "slow and not gpu" $(ALLOW_EMPTY)

# Headless Chromium for the dashboard test (tests/flows/test_server.py); Debian's package. The tests
# never install anything: without it that test skips, or fails under CI=true.
browser:
	@command -v chromium >/dev/null || { $(SUDO) apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q chromium; }
	@chromium --version

test-all: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	$(PY) -m flows.demo

server: $(STAMP)
	PREFECT=$(VENV)/bin/prefect bash deploy/server.sh start

# The Docker and Kubernetes work pools from deploy/'s templates, on the Prefect API of PREFECT_API_URL.
pools: $(STAMP)
	$(PY) deploy/pools.py

server-stop:
	PREFECT=$(VENV)/bin/prefect bash deploy/server.sh stop

server-status:
	PREFECT=$(VENV)/bin/prefect bash deploy/server.sh status

bench: $(STAMP)
	$(PY) -m benchmarks.run_all

# The GPU figures in one run (~6 min on an H100/H200; see BENCHMARKS.md, "GPU suite"). On a machine whose
# Python already holds torch (no .venv, no package index): `make bench-gpu PY=python3` skips the install.
# BENCH_GPU_ARGS="--device cpu --tiny" is the CI-sized run; the results also go to $(BENCH_GPU_OUT) (+ .md).
BENCH_GPU_OUT ?= bench-gpu.json
BENCH_GPU_ARGS ?=
bench-gpu: $(if $(filter command line environment,$(origin PY)),,$(STAMP))
	PYTHONUNBUFFERED=1 $(PY) -m benchmarks.gpu_suite --out $(BENCH_GPU_OUT) $(BENCH_GPU_ARGS)

# Mutation testing (not in CI, hours for the full set on 2 cores; see TESTING.md). mutmut is installed
# here, not in the dev extra; settings (files, test files) are in pyproject.toml [tool.mutmut].
MUTMUT_PIN := mutmut==3.8.1
MUTANTS ?= "uvit.diffusion.*" "uvit.sampling.*" "storage.artifacts.x__jsonable*" \
	"storage.artifacts.x_canonical_json*" "storage.artifacts.x_artifact_key*" "flows.*x_*_key__*"
mutate: $(STAMP)
	$(PY) -m pip show mutmut >/dev/null 2>&1 || $(PY) -m pip install -q "$(MUTMUT_PIN)"
	PYTHONPATH=$(CURDIR)/mutants $(PY) -m mutmut run --max-children $(or $(JOBS),2) $(MUTANTS)
	PYTHONPATH=$(CURDIR)/mutants $(PY) -m mutmut results

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(VENV)/bin/lint-imports

format: $(STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

clean:
	rm -rf .pytest_cache .ruff_cache .prefect demo-store runs mutants
