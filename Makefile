SHELL := /bin/bash
GO ?= go
export FLEET_CACHE ?= /var/cache/agentfleet

.PHONY: build plugin generate test cross e2e bench lint demo

build:
	$(GO) build -o bin/fleet ./cmd/fleet

plugin:
	$(GO) build -o bin/packer-plugin-agentfleet ./cmd/packer-plugin-agentfleet

# Regenerates the plugin's HCL2 config spec after Config changes.
generate:
	$(GO) generate ./cmd/packer-plugin-agentfleet/

test:
	$(GO) test ./...

# Builds and vets for linux and darwin, amd64 and arm64.
cross:
	scripts/cross.sh

# Boots real VMs (needs root for the image build).
e2e:
	FLEET_E2E=1 $(GO) test -count=1 -timeout 75m -v ./e2e/

# Prints a table of ratios measured side by side in one run (boots VMs).
# pipefail: a failing bench row fails make, whatever grep keeps.
bench:
	set -o pipefail; FLEET_E2E=1 FLEET_BENCH=1 $(GO) test -count=1 -timeout 60m -run TestBench -v ./e2e/ | grep -vE '^(=== RUN|    e2e_test|    bench_test.go:[0-9]+: fleet )'

lint:
	scripts/lint.sh

demo:
	scripts/demo.sh
