# The front door. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

CLUSTER ?= local
PYTHON ?= python3
VENV := .venv
VENV_STAMP := $(VENV)/.installed
PY := $(VENV)/bin/python
PYTEST := $(VENV)/bin/pytest

.PHONY: help
help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  %-18s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(VENV_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

.PHONY: venv
venv: $(VENV_STAMP) ## Create .venv with the package and its dev tools

.PHONY: cluster-build
cluster-build: ## Build the pinned cluster binaries from Go modules (cached; a second run builds nothing)
	bash hack/build-binaries.sh

.PHONY: cluster-up
cluster-up: ## Bring up the local single-node cluster (CLUSTER=kind for a kind cluster where Docker runs)
ifeq ($(CLUSTER),kind)
	bash hack/kind-up.sh
else
	bash hack/cluster-up.sh
endif

.PHONY: cluster-down
cluster-down: ## Stop the local cluster and remove what it left on the machine
	bash hack/cluster-down.sh

.PHONY: kubeconfig
kubeconfig: ## Print the path of the admin kubeconfig (CLUSTER=kind: the kind cluster's)
ifeq ($(CLUSTER),kind)
	@bash -c 'source hack/lib.sh && echo "$$CACHE_ROOT/kind-$${KIND_CLUSTER:-sandbox-operator}.kubeconfig"'
else
	@bash -c 'source hack/lib.sh && echo "$$ADMIN_KUBECONFIG"'
endif

.PHONY: bin-dir
bin-dir: ## Print the directory of the cluster binaries (kubectl, helm, ...)
	@bash -c 'source hack/lib.sh && echo "$$BIN_DIR"'

.PHONY: image
image: ## Build the images (docker or buildah) and import them into the local cluster
	bash hack/build-images.sh

.PHONY: lint
lint: $(VENV_STAMP) ## ruff, mypy (strict) and the static checks (tests/static): chart, images, shell scripts
	@command -v shellcheck >/dev/null 2>&1 || bash -c 'source hack/lib.sh && source hack/image-lib.sh && need_command shellcheck shellcheck'
	$(VENV)/bin/ruff check operator tests bench
	$(VENV)/bin/mypy
	$(PYTEST) tests/static

.PHONY: test-unit
test-unit: $(VENV_STAMP) ## Unit tests only: no cluster and no binaries beyond Python, under a minute
	$(PYTEST) tests/unit

.PHONY: check
check: lint test-unit ## Everything that needs no cluster: lint, then the unit tests

.PHONY: test-integration
test-integration: $(VENV_STAMP) ## Operator against the real cluster (brought up if needed)
	$(PYTEST) tests/integration

.PHONY: test-e2e
test-e2e: $(VENV_STAMP) ## Images, SDK, CLI and chart against the real cluster
	$(PYTEST) tests/e2e

.PHONY: test
test: $(VENV_STAMP) ## The whole suite: lint, unit, then cluster tests (brings the cluster up if needed)
	$(MAKE) lint
	$(PYTEST) tests/unit
	$(PYTEST) tests/integration tests/e2e

# The peer the exec and code benchmarks measure side by side, pinned, in the cache outside the repository.
CACHE_ROOT ?= $(or $(SANDBOX_OPERATOR_CACHE),$(HOME)/.cache/sandbox-operator)
LLM_SANDBOX_VERSION := 0.3.46
LLM_SANDBOX_PYTHON := $(CACHE_ROOT)/tools/llm-sandbox-$(LLM_SANDBOX_VERSION)/bin/python

$(LLM_SANDBOX_PYTHON):
	$(PYTHON) -m venv $(CACHE_ROOT)/tools/llm-sandbox-$(LLM_SANDBOX_VERSION)
	$(CACHE_ROOT)/tools/llm-sandbox-$(LLM_SANDBOX_VERSION)/bin/pip install -q 'llm-sandbox[k8s]==$(LLM_SANDBOX_VERSION)'

.PHONY: bench-exec
bench-exec: $(VENV_STAMP) $(LLM_SANDBOX_PYTHON) ## Commands and files: the SDK (channel and exec), kubectl exec and llm-sandbox, one table
	$(PY) -m bench.bench_exec --namespace sandbox-bench --start-operator --llm-sandbox-python $(LLM_SANDBOX_PYTHON)

# IPython for llm-sandbox's interactive session: its runtime pip-installs it in the sandbox, and no pod here reaches a
# package index, so bench_code copies it into the pod from here (the version that unpinned install took when pinned).
LLM_SANDBOX_IPYTHON_VERSION := 9.18.1
LLM_SANDBOX_IPYTHON := $(CACHE_ROOT)/tools/llm-sandbox-$(LLM_SANDBOX_VERSION)-ipython-$(LLM_SANDBOX_IPYTHON_VERSION)

$(LLM_SANDBOX_IPYTHON): | $(LLM_SANDBOX_PYTHON)
	rm -rf $@.partial
	$(LLM_SANDBOX_PYTHON) -m pip install -q --target $@.partial 'ipython==$(LLM_SANDBOX_IPYTHON_VERSION)'
	mv $@.partial $@

.PHONY: bench-code
bench-code: $(VENV_STAMP) $(LLM_SANDBOX_PYTHON) $(LLM_SANDBOX_IPYTHON) ## Code cells: round trip, context start, 1 MB stdout, cells/s, next to llm-sandbox's interactive session
	$(PY) -m bench.bench_code --namespace sandbox-bench --start-operator --llm-sandbox-python $(LLM_SANDBOX_PYTHON) --llm-sandbox-ipython $(LLM_SANDBOX_IPYTHON)

.PHONY: bench-density
bench-density: $(VENV_STAMP) ## 100 default sandboxes: burst, single start, idle cost, memory, with the node's profile
	$(PY) -m bench.bench_density

.PHONY: bench-runtime
bench-runtime: $(VENV_STAMP) ## runc next to gVisor: start, commands, files, code cells, CPU and syscall work, idle memory and CPU, the pod overhead
	$(PY) -m bench.bench_runtime --namespace sandbox-bench --start-operator

.PHONY: bench-pool
bench-pool: $(VENV_STAMP) ## Warm pools: claim -> Ready serial, 20 at once, 20/s for 60 s, first command, next to cold creates
	$(PY) -m bench.bench_pool

KWOK_NODES ?= 20

.PHONY: kwok-up
kwok-up: ## Add simulated nodes (kwok; KWOK_NODES, default 20) to the local cluster, for the scale benchmark
	bash hack/kwok-up.sh $(KWOK_NODES)

.PHONY: kwok-down
kwok-down: ## Remove the simulated nodes and stop kwok
	bash hack/kwok-down.sh

.PHONY: bench-scale
bench-scale: $(VENV_STAMP) ## 2,000 Sandboxes on 20 kwok nodes (kwok-up, the run, then kwok-down even on failure): RSS, create -> pod, writes, collector pass, relists (minutes)
	bash hack/kwok-up.sh $(KWOK_NODES) && $(PY) -m bench.bench_scale; status=$$?; bash hack/kwok-down.sh; exit $$status

.PHONY: bench-failover
bench-failover: $(VENV_STAMP) ## The chart's two replicas: the leader SIGKILLed or frozen 5 times each, how soon a create is served again (minutes)
	$(PY) -m bench.bench_failover

.PHONY: operator-image
operator-image: ## Build the operator image (wheels on the host, cached) and import it into the local cluster
	bash hack/build-operator-image.sh

.PHONY: demo
demo: ## Build what is missing, bring up the cluster, helm install the operator, print Hello from a sandbox
	CLUSTER=$(CLUSTER) bash hack/demo.sh

.PHONY: chart-lint
chart-lint: $(VENV_STAMP) ## helm lint --strict, helm template checks and a checkov scan of the chart
	$(PYTEST) tests/static/test_chart.py tests/static/test_chart_image.py
