# lmproxy — build, run, test. A fresh machine needs only Go.
GO ?= go
BIN := bin/lmproxy
PORT ?= 8000

.PHONY: build run test lint bench clean

build:
	$(GO) build -o $(BIN) ./cmd/lmproxy

# The proxy on :$(PORT) with two simulated replicas that register themselves.
run: build
	@./scripts/run-demo.sh $(BIN) $(PORT)

test:
	@command -v node >/dev/null && command -v npm >/dev/null || \
		echo "note: node/npm not found: the test with the official openai npm client is skipped"
	$(GO) vet ./...
	$(GO) test -race -count=1 ./...
	@# and without the race detector, under which http/netio makes the standard library's calls
	$(GO) test -count=1 ./http/netio ./http/relay ./http/h1

lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || (gofmt -l $$(git ls-files '*.go'); exit 1)
	$(GO) vet ./...

# The load harness (../shared/bench, or $BENCH_DIR) against direct, nginx, haproxy and lmproxy, and
# the Go benchmarks; writes the figures into docs/performance.md. Takes ~30 min; QUICK=1 takes ~7.
# Knobs: QUICK=1, REPS, SCENARIOS (see scripts/bench.sh). Not part of `make test`.
bench: build
	./scripts/bench.sh $(BIN)

clean:
	rm -rf bin
