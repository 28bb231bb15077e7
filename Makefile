# Build, test and run the effects services. `make help` lists the targets.
#
# The test target is the one command the README names for running the tests;
# .ci/run calls `make ci` (lint, then test) after it has started PostgreSQL and
# NATS.

GO        ?= go
BIN       ?= bin
# Extra flags for `go test` in `make test`, e.g. TESTFLAGS=-v or TESTFLAGS='-run TestIngest'.
TESTFLAGS ?=
# Flags for `make bench` (effects-bench -help lists them), e.g. BENCHFLAGS='-effects 100000',
# BENCHFLAGS='-long', BENCHFLAGS='-contenders river,table', BENCHFLAGS='-soak',
# BENCHFLAGS='-service-env GOGC=400'. PostgreSQL: EFFECTS_BENCH_DATABASE_URL.
BENCHFLAGS ?=
# Extra flags for `make bench-e2e` (the e2e Go benchmarks), e.g. BENCHE2EFLAGS='-effects 50000',
# BENCHE2EFLAGS='-bench EndToEndTable', BENCHE2EFLAGS='-nats nats://host:4222 -nats-delete-streams'.
BENCHE2EFLAGS ?=
# Flags for `make capacity`'s benchmarks (effects per measurement), e.g.
# CAPACITYFLAGS='-benchtime=5000x'; CAPACITY_ROUNDS rounds run one after the
# other, each measuring every set-up once, so set-ups alternate.
CAPACITYFLAGS ?= -benchtime=20000x
CAPACITY_ROUNDS ?= 3
# Extra flags for `make faults`, e.g. FAULTSFLAGS='-run TestKill'.
FAULTSFLAGS ?=
# A file `make faults` appends the fault tests' results to (a markdown table);
# unset, they are only logged. `make reliability` sets it.
FAULTS_RESULTS ?=
# Flags for `make soak`, e.g. SOAKFLAGS='-soak.duration=3m -soak.rate=2000 -soak.plain'.
SOAKFLAGS ?=

# The checks of the deployment files: a Go module of their own, so that the
# main module does not depend on Kubernetes, kustomize and compose-go.
CHECK_DIR := deployments/check
# The side-by-side benchmark (`make bench`): a Go module of its own, so that
# the main module does not depend on River and the chart library.
BENCH_DIR := bench

.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

.PHONY: help
help: ## List the targets
	@awk 'BEGIN { FS = ":.*## " } /^[a-zA-Z0-9_-]+:.*## / { printf "  %-12s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)

.PHONY: build
build: ## Build the binaries into bin/ (ingest, dispatcher, completer, effects)
	@mkdir -p $(BIN)
	$(GO) build -o $(BIN)/ ./cmd/...

# The nats-server `make run` and CI use: the version go.mod pins, which is the
# one the tests embed (github.com/nats-io/nats-server/v2), built from the
# module cache rather than taken from the system (Debian's is too old).
NATS_SERVER ?= $(BIN)/tools/nats-server

.PHONY: nats-server
nats-server: ## Build the pinned nats-server (go.mod's version, as in the tests) into bin/tools
	@mkdir -p $(dir $(NATS_SERVER))
	$(GO) build -o $(NATS_SERVER) github.com/nats-io/nats-server/v2

# The PostgreSQL the tests use when EFFECTS_TEST_DATABASE_URL is unset and it
# answers (empty: internal/testpg's default, database test on
# 127.0.0.1:5432); when nothing usable answers there, testpg starts a private
# one (initdb) for the run and removes it at the end. Point it at a port
# where nothing listens to try that path.
TEST_PG_DEFAULT ?=
# Runs a command with EFFECTS_TEST_DATABASE_URL set (internal/testpg).
WITH_TEST_PG = $(GO) run ./internal/testpg $(if $(TEST_PG_DEFAULT),-default '$(TEST_PG_DEFAULT)')

.PHONY: test
test: ## Run every test with the race detector, the deployment checks and the benchmark's tests; starts a private PostgreSQL when none answers (needs promtool)
	$(WITH_TEST_PG) -- $(MAKE) test-modules

# The tests of the three modules against EFFECTS_TEST_DATABASE_URL: what
# `make test` runs under one PostgreSQL (the inner targets find it set).
.PHONY: test-modules
test-modules:
	$(GO) test -race -count=1 -timeout 20m $(TESTFLAGS) ./...
	$(MAKE) check-deployments
	$(MAKE) test-bench

# The nats CLI the test of other teams' consumers runs (e2e/natscli_test.go),
# pinned in one place for the Makefile and the test.
NATSCLI_VERSION := $(shell cat e2e/testdata/natscli.version)

.PHONY: console-screenshots
console-screenshots: ## Write the console's screenshots for the docs (docs/console/*.png) from the browser test (needs Chromium, PostgreSQL)
	$(GO) test -count=1 -run TestScreenshots ./pkg/effects/console -args -screenshots=$(CURDIR)/docs/console

.PHONY: natscli
natscli: ## Build the pinned nats CLI into bin/tools/nats (the consumer test uses it; else it builds its own)
	GOBIN=$(CURDIR)/$(BIN)/tools $(GO) install github.com/nats-io/natscli/nats@$(NATSCLI_VERSION)

.PHONY: check-deployments
check-deployments: ## Check docker-compose, Kubernetes, Hasura, Prometheus, Grafana and the Dockerfile, and that every setting is documented (deployments/check; needs promtool)
	$(WITH_TEST_PG) -dir $(CHECK_DIR) -- $(GO) test -count=1 -timeout 20m $(TESTFLAGS) ./...

.PHONY: test-bench
test-bench: ## Test the benchmark's own code (the bench module; PostgreSQL as in test)
	$(WITH_TEST_PG) -dir $(BENCH_DIR) -- $(GO) test -count=1 -timeout 5m $(TESTFLAGS) ./...

.PHONY: vet
vet: ## go vet every package, the fault suite, the deployment checks' and the benchmark's modules included
	$(GO) vet ./...
	$(GO) vet -tags faults ./e2e/faults/...
	cd $(CHECK_DIR) && $(GO) vet ./...
	cd $(BENCH_DIR) && $(GO) vet ./...

.PHONY: staticcheck
staticcheck: ## Run staticcheck (pinned in go.mod as a tool) on the three modules
	$(GO) tool staticcheck ./...
	$(GO) tool staticcheck -tags faults ./e2e/faults/...
	cd $(CHECK_DIR) && "$$($(GO) -C $(CURDIR) tool -n staticcheck)" ./...
	cd $(BENCH_DIR) && "$$($(GO) -C $(CURDIR) tool -n staticcheck)" ./...

.PHONY: fmt-check
fmt-check: ## Fail if any Go file is not gofmt-formatted
	@files="$$(gofmt -l .)"; \
	if [ -n "$$files" ]; then \
		echo "These files are not gofmt-formatted (run gofmt -w on them):"; \
		echo "$$files"; \
		exit 1; \
	fi

.PHONY: script-check
script-check: ## Syntax-check the shell scripts; refuse pipes into head (under pipefail they fail with 141 when head exits first)
	@for f in .ci/run scripts/*.sh; do bash -n "$$f" || exit 1; done
	@if grep -nE '^[^#]*\|[[:space:]]*head([[:space:]]|$$)' .ci/run scripts/*.sh; then \
		echo "Pipes into head fail under 'set -o pipefail' when head exits before the writer (exit 141); read the whole output instead (see first_line in .ci/run)."; \
		exit 1; \
	fi

.PHONY: lint
lint: fmt-check vet staticcheck script-check ## fmt-check, vet, staticcheck and script-check

.PHONY: bench
bench: build nats-server ## River and the pipeline side by side, each in its own processes; writes docs/bench/latest.{md,png} (flags: BENCHFLAGS)
	cd $(BENCH_DIR) && $(GO) build -o $(CURDIR)/$(BIN)/effects-bench ./cmd/effects-bench
	$(BIN)/effects-bench -bin $(BIN) -nats-server $(NATS_SERVER) $(BENCHFLAGS)

.PHONY: bench-e2e
bench-e2e: ## The e2e Go benchmarks: the whole pipeline in one process, for one CPU profile (flags: BENCHE2EFLAGS)
	$(GO) test -run '^$$' -bench 'EndToEnd' -benchtime=1x -timeout 30m -v $(BENCHE2EFLAGS) ./e2e/

.PHONY: capacity
capacity: ## Measure docs/capacity.md's figures: one dispatcher, one completer, the pipeline on single/cluster-R1/cluster-R3 NATS side by side; PostgreSQL's completion writes (CAPACITYFLAGS)
	@for round in $$(seq $(CAPACITY_ROUNDS)); do \
		echo "== round $$round of $(CAPACITY_ROUNDS)"; \
		$(GO) test -run '^$$' -bench 'Capacity' -timeout 60m $(CAPACITYFLAGS) ./e2e/ || exit 1; \
		$(GO) test -run '^$$' -bench 'CompleterWriteParallel' -benchtime=40x -timeout 30m ./internal/completer/ || exit 1; \
	done

.PHONY: faults
faults: ## Run the fault suite: the real binaries under kill -9, SIGTERM, NATS and PostgreSQL restarts, Hasura misbehaviour (build tag faults; ~5 min)
	$(GO) vet -tags faults ./e2e/faults/...
	EFFECTS_FAULTS_RESULTS=$(FAULTS_RESULTS) $(GO) test -tags faults -count=1 -timeout 15m -v $(FAULTSFLAGS) ./e2e/faults/...

.PHONY: reliability
reliability: ## Run the fault suite and write its results table into docs/reliability.md
	./scripts/faults-report.sh

# Fuzzing: every `func Fuzz...` in a _test.go file, found by grep so that a
# new target is fuzzed without being listed here. One target at a time, one
# worker (FUZZPARALLEL), FUZZTIME each. The seed corpus of each (f.Add and
# testdata/fuzz/<FuzzName>/) already runs in `make test`.
FUZZTIME     ?= 30s
FUZZPARALLEL ?= 1

.PHONY: fuzz
fuzz: ## Fuzz every decoder of outside input in turn, FUZZTIME each (default 30s); failing inputs land in testdata/fuzz
	@set -e; \
	for file in $$(grep -rl --include='*_test.go' '^func Fuzz' . | sort); do \
		dir=./$$(dirname $${file#./}); \
		for name in $$(sed -n 's/^func \(Fuzz[A-Za-z0-9_]*\)(.*/\1/p' $$file); do \
			echo "==> $$name in $$dir ($(FUZZTIME))"; \
			$(GO) test -run '^$$' -fuzz "^$$name$$" -fuzztime $(FUZZTIME) -parallel $(FUZZPARALLEL) $$dir; \
		done; \
	done

.PHONY: dev
dev: ## Run the whole pipeline in one process: embedded NATS, a private PostgreSQL (or DATABASE_URL); Ctrl-C stops all
	$(GO) run ./cmd/effects dev

.PHONY: soak
soak: ## Measure the table under a sustained rate with retention (10 minutes; not part of test)
	$(GO) test -tags soak -run '^TestSoak$$' -count=1 -v -timeout 60m ./internal/retention/ -args $(SOAKFLAGS)

.PHONY: run
run: build nats-server ## Run a pinned nats-server, ingest, dispatcher and completer locally against local PostgreSQL (Ctrl-C stops all)
	BIN=$(BIN) NATS_SERVER=$(NATS_SERVER) ./scripts/run-local.sh

.PHONY: ci
ci: ## What .ci/run runs once services are up: lint, test, then the fault suite
	$(MAKE) lint
	$(MAKE) test
	$(MAKE) faults

.PHONY: clean
clean: ## Remove bin/ (binaries and local run logs)
	rm -rf $(BIN)
