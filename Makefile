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
	$(GO) vet ./...
	$(GO) test -race -count=1 ./...

lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || (gofmt -l $$(git ls-files '*.go'); exit 1)
	$(GO) vet ./...

clean:
	rm -rf bin
