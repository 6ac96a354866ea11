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

# The portal's browser tests drive Debian's Chromium: installed here when it
# is missing (as root, or through sudo), so `make test` is the whole set-up.
.PHONY: chromium
chromium:
	@if [ ! -x /usr/bin/chromium ]; then \
	  echo "make: installing Debian's chromium for the portal's browser tests"; \
	  sudo=""; [ "$$(id -u)" = 0 ] || sudo="sudo"; \
	  DEBIAN_FRONTEND=noninteractive $$sudo apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq chromium >/dev/null || \
	  { echo "make: could not install chromium; install it with: apt-get install -y chromium" >&2; exit 1; }; \
	fi

# Every test, then every fuzz target for a few seconds, then the fault
# test's figures.
test: fmt-check vet node_modules/.package-lock.json chromium
	JIT_CHAOS_REPORT=$(CURDIR)/.chaos-report.txt $(GO) test -count=1 -race -timeout 12m ./...
	FUZZTIME=$${FUZZTIME:-3s} $(MAKE) --no-print-directory fuzz
	@if [ -f .chaos-report.txt ]; then cat .chaos-report.txt; fi

# Every Go fuzz target for FUZZTIME each (default 5s); see .ci/fuzz.sh.
.PHONY: fuzz
fuzz:
	GO=$(GO) bash .ci/fuzz.sh

clean:
	rm -rf bin dist .jit-local

# --- Packaging and deployment (docs/deploy.md) ---------------------------------
# make package              stages $(DIST)/app: host.json, the function folders beside it,
#                           the linux/amd64 handler binary and .funcignore
# make publish APP=NAME     publishes $(DIST)/app to the function app NAME (Core Tools)
# make deploy RG=.. LOCATION=.. [PARAMS=file.json]   Bicep, publish, Event Grid, URL
DIST ?= dist
APP_DIR = $(DIST)/app
DEPLOYMENT ?= jitaccess

.PHONY: package publish deploy publish-check deploy-check app-registration

# make app-registration NAME=jitaccess-api   creates the API's Entra ID app registration with
# the app roles of infra/app-roles.json (az CLI, signed in to the tenant) and prints the client
# id that main.bicep's apiClientId parameter takes.
app-registration:
	@if [ -z "$(NAME)" ]; then echo "make app-registration: NAME is missing: make app-registration NAME=<display name>" >&2; exit 2; fi
	@command -v az >/dev/null 2>&1 || { echo "make app-registration: the Azure CLI ('az') is not installed; see docs/deploy.md" >&2; exit 127; }
	@id=$$(az ad app create --display-name "$(NAME)" --sign-in-audience AzureADMyOrg \
	  --app-roles @infra/app-roles.json --enable-id-token-issuance true --query appId --output tsv) && \
	az ad app update --id $$id --identifier-uris api://$$id && \
	az ad sp create --id $$id --output none && \
	echo "app registration $(NAME): client id $$id (apiClientId); assign people and groups to its roles in Enterprise applications"

package:
	rm -rf $(APP_DIR)
	mkdir -p $(APP_DIR)
	cp host.json .funcignore $(APP_DIR)/
	cp -R functions/. $(APP_DIR)/
	printf '{"IsEncrypted": false, "Values": {"FUNCTIONS_WORKER_RUNTIME": "custom"}}\n' > $(APP_DIR)/local.settings.json
	GOOS=linux GOARCH=amd64 CGO_ENABLED=0 $(GO) build -trimpath -ldflags='-s -w' -o $(APP_DIR)/handler ./handler
	chmod 0755 $(APP_DIR)/handler
	@echo "staged $(APP_DIR)"

publish-check:
	@if [ -z "$(APP)" ]; then echo "make publish: APP is missing: make publish APP=<function app name>" >&2; exit 2; fi
	@command -v func >/dev/null 2>&1 || { echo "make publish: Azure Functions Core Tools ('func') is not installed; see docs/deploy.md" >&2; exit 127; }

# local.settings.json in $(APP_DIR) tells Core Tools the worker runtime is "custom";
# .funcignore keeps it out of the zip.
publish: publish-check package
	cd $(APP_DIR) && func azure functionapp publish $(APP) $(FUNC_PUBLISH_FLAGS)

deploy-check:
	@if [ -z "$(RG)" ] || [ -z "$(LOCATION)" ]; then echo "make deploy: RG and LOCATION are required: make deploy RG=<resource group> LOCATION=<region> [PARAMS=infra/main.parameters.json]" >&2; exit 2; fi
	@command -v az >/dev/null 2>&1 || { echo "make deploy: the Azure CLI ('az') is not installed; see docs/deploy.md" >&2; exit 127; }
	@command -v func >/dev/null 2>&1 || { echo "make deploy: Azure Functions Core Tools ('func') is not installed; see docs/deploy.md" >&2; exit 127; }

# Two passes: Event Grid validates an AzureFunction endpoint against the deployed
# functions, so the event subscriptions are created after the code is published.
deploy: deploy-check
	az group create --name $(RG) --location $(LOCATION) --output none
	az deployment group create --resource-group $(RG) --name $(DEPLOYMENT) \
	  --template-file infra/main.bicep $(if $(PARAMS),--parameters @$(PARAMS)) \
	  --parameters location=$(LOCATION) deployEventSubscriptions=false --output none
	$(MAKE) publish APP=$$(az deployment group show --resource-group $(RG) --name $(DEPLOYMENT) --query properties.outputs.functionAppName.value --output tsv)
	az deployment group create --resource-group $(RG) --name $(DEPLOYMENT) \
	  --template-file infra/main.bicep $(if $(PARAMS),--parameters @$(PARAMS)) \
	  --parameters location=$(LOCATION) deployEventSubscriptions=true --output none
	@echo "jitaccess is at $$(az deployment group show --resource-group $(RG) --name $(DEPLOYMENT) --query properties.outputs.url.value --output tsv)"

# Every scenario in local mode and in Functions mode (handler instances under
# the host simulator, Azurite, the Service Bus double), at ARM latency 0 and at
# 2 s with ARM's limits, side by side in one table on stdout; the same figures
# in docs/bench-results.json (docs/performance.md). Not part of `make test`.
# BENCH_FLAGS passes options, e.g. BENCH_FLAGS='-only wide -latencies 2s'.
.PHONY: bench bench-local
bench: build node_modules/.package-lock.json
	$(GO) run ./handler/bench -handler $(BIN) -out docs/bench-results.json $(BENCH_FLAGS)

# The local-mode scenarios with their targets (start-up, initiate, open latency,
# close burst, VM list, audit CSV, shared NSG, ARM calls per grant).
bench-local: build
	$(GO) run ./handler/bench -suite local -handler $(BIN) -out docs/bench-local-results.json $(BENCH_FLAGS)
