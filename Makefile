# krun-tee build, test and demo entry points. `make demo` and `make test` work
# on a fresh Debian machine: each installs what it needs first.
SHELL      := /bin/bash
GO         ?= go
BIN        := bin
VERSION    ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS    := -s -w -X main.version=$(VERSION)
FUZZTIME   ?= 10s
export GOFLAGS ?= -mod=mod

.PHONY: all deps build fw test unit fuzz e2e bench demo clean

all: build

deps:
	@scripts/deps.sh

# The init is measured: it is built without a VCS stamp (-buildvcs=false) so its
# bytes change only when guest code does; `go test ./init -run TestInitrdDigest -v`
# checks that and prints its digest.
build:
	@mkdir -p $(BIN)
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/krun-tee ./cmd/krun-tee
	@if [ -d init ]; then CGO_ENABLED=0 $(GO) build -trimpath -buildvcs=false -ldflags '-s -w' -o $(BIN)/init ./init; fi

# The guest (and nested-harness L1) kernel, cached by input hash outside the
# repo, then the firmware bundle bin/bundle/{shim.bin,vmlinux,initrd.cpio}.
fw: deps build
	@fw-sev/build-kernel.sh >/dev/null
	@fw-sev/build-bundle.sh

# Unit tests (including fuzz seed corpora), short fuzzing, then end to end.
test: deps build fw unit fuzz e2e

unit: deps
	$(GO) vet ./...
	$(GO) test -count=1 -timeout 20m ./...

fuzz:
	FUZZTIME=$(FUZZTIME) scripts/fuzz.sh

e2e: deps build fw
	@tests/e2e/run.sh

# Benchmarks print numbers beside a reference measured in the same run.
bench: deps build fw
	$(GO) test -run '^$$' -bench . -count 1 ./...
	@for b in tests/bench/*.sh; do "$$b" || exit 1; done

demo: deps build fw
	@scripts/demo.sh

clean:
	rm -rf $(BIN)
