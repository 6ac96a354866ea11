# jitaccess: make run (local mode), make test (everything CI runs).
SHELL := /bin/bash
GO ?= go
BIN := bin/handler

.PHONY: run build test vet fmt-check unit e2e clean

run: build
	./$(BIN) local

build:
	$(GO) build -o $(BIN) ./handler

vet:
	$(GO) vet ./...

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

# npm packages the tests start (Azurite, the Service Bus double), from the lock file.
node_modules/.package-lock.json: package.json package-lock.json
	npm ci --no-audit --no-fund

test: fmt-check vet node_modules/.package-lock.json
	$(GO) test -count=1 -race -timeout 10m ./...

clean:
	rm -rf bin dist .jit-local
