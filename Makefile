# pillion — the two commands a newcomer needs are `make demo` and `make test`.

GO          ?= go
BIN         := bin/pillion
# The sidecar image's binary: the lean build (tag lean: init, proxy, wait,
# identity, version; no Kubernetes client linked).
BIN_PROXY   := bin/proxy/pillion
# Heavy or downloaded tools are built once into this folder and reused.
CACHE_DIR   ?= $(CURDIR)/.cache
TOOLS_DIR   := $(CACHE_DIR)/tools
STATICCHECK := $(TOOLS_DIR)/staticcheck
STATICCHECK_VERSION := v0.7.0
# h2spec, the HTTP/2 conformance suite the e2e tests run against the sidecar.
H2SPEC      := $(TOOLS_DIR)/h2spec
H2SPEC_VERSION := v2.2.1+incompatible
# fortio, the load generator and test server of make bench (and its smoke test).
FORTIO      := $(TOOLS_DIR)/fortio
FORTIO_VERSION := v1.68.2
# Prometheus, which the Istio metrics e2e test runs to scrape the sidecars and
# evaluate the Istio dashboards' queries: built from source once, without
# its service discovery plugins (about 2.5 minutes), and kept here.
PROMETHEUS_VERSION := v0.316.0
PROMETHEUS  := $(TOOLS_DIR)/prometheus-$(PROMETHEUS_VERSION)
# kustomize renders deploy/ (the injector webhook's manifests and their overlays).
KUSTOMIZE   := $(TOOLS_DIR)/kustomize
KUSTOMIZE_VERSION := v5.8.0
# SPIRE, the production SPIFFE issuer the identity e2e tests run against:
# built from source once (several minutes, cgo) and kept here.
SPIRE_VERSION := v1.13.3
SPIRE_DIR   := $(CACHE_DIR)/spire-$(SPIRE_VERSION)
SPIRE       := $(SPIRE_DIR)/spire-server
# Jaeger (v2, the OpenTelemetry Collector based all-in-one), the tracing
# backend the e2e tests send spans to and read them back from: built from
# the Go module proxy once (about 4 minutes, 2.3 GB RSS) and kept here.
JAEGER_VERSION := v1.75.0
JAEGER      := $(CACHE_DIR)/jaeger-$(JAEGER_VERSION)/jaeger
# A real kube-apiserver and etcd for the injector's and discovery's tests
# (envtest), and kube-controller-manager for real EndpointSlices, built from
# the Go module proxy once (about 6 minutes cold) and kept here; and
# cert-manager's CRDs, so deploy/cert-manager can be dry-run applied.
KUBE_VERSION := v1.36.3
ETCD_VERSION := v3.6.8
KUBE_DIR    := $(CACHE_DIR)/kube-$(KUBE_VERSION)
KUBE        := $(KUBE_DIR)/kube-controller-manager
CERT_MANAGER_VERSION := v1.19.1
CERT_MANAGER_CRDS := $(CACHE_DIR)/cert-manager-$(CERT_MANAGER_VERSION)/crds
# The discovery API's Go code is generated from api/**/*.proto and committed;
# `make proto` regenerates it with these pinned generators (protoc from
# Debian's protobuf-compiler, installed by hack/deps.sh --proto).
PROTOC_GEN_GO := $(TOOLS_DIR)/protoc-gen-go
PROTOC_GEN_GO_VERSION := v1.36.12
PROTOC_GEN_GO_GRPC := $(TOOLS_DIR)/protoc-gen-go-grpc
PROTOC_GEN_GO_GRPC_VERSION := v1.5.1
VERSION     ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS     := -s -w -X main.version=$(VERSION)
GOTEST_FLAGS ?= -count=1 -race -timeout 25m

.PHONY: all build test tools unit demo bench bench-discovery soak lint deps clean help h2spec spire kustomize kube proto prometheus jaeger

all: build

help:
	@echo "make demo   two pods in network namespaces on this machine, traffic through their sidecars (root)"
	@echo "make test   lint, then every test, the root-only ones included (root; CI=true turns their skips into failures)"
	@echo "make bench  the sidecar's cost side by side with the direct path and HAProxy (root, ~10 min)"
	@echo "make soak   20 minutes of mixed traffic through an mTLS pair, SVIDs rotating and configs reloading: failures, and the sidecars' RSS, goroutines and descriptors over time (root)"
	@echo "make bench-discovery  discovery with 2,000 Services and 20,000 Pods: memory, update latency, a sidecar's memory (root, ~5 min)"
	@echo "make build  bin/pillion (every command) and bin/proxy/pillion (the sidecar image's lean build)"
	@echo "make lint   gofmt, go vet, staticcheck"
	@echo "make clean  remove bin/, the tool cache and any test namespaces left behind"

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/pillion
	CGO_ENABLED=0 $(GO) build -tags lean -trimpath -ldflags '$(LDFLAGS)' -o $(BIN_PROXY) ./cmd/pillion

# deps installs what the tests and the demo use from the system: iptables,
# iproute2, setpriv. It needs root when something is missing.
deps:
	@hack/deps.sh

# The tools the tests run, built once into CACHE_DIR: the heavy ones first.
TEST_TOOLS := $(KUBE) $(SPIRE) $(JAEGER) $(PROMETHEUS) $(KUSTOMIZE) $(H2SPEC) $(CERT_MANAGER_CRDS) $(FORTIO)

# tools builds TEST_TOOLS two at a time: on a fresh machine one build's
# module downloads overlap the other's compiling. Each build's output is
# printed whole when it ends.
tools:
	@$(MAKE) --no-print-directory -j2 -Otarget $(TEST_TOOLS)

test: deps lint tools
	@if [ "$$(id -u)" != 0 ]; then echo "note: not root: the tests that need network namespaces will be skipped (run 'sudo make test')"; fi
	H2SPEC=$(H2SPEC) SPIRE_DIR=$(SPIRE_DIR) KUBEBUILDER_ASSETS=$(KUBE_DIR) KUSTOMIZE=$(KUSTOMIZE) CERT_MANAGER_CRDS=$(CERT_MANAGER_CRDS) FORTIO=$(FORTIO) PROMETHEUS=$(PROMETHEUS) JAEGER=$(JAEGER) $(GO) test $(GOTEST_FLAGS) ./...

# unit runs only the tests that need no privileges.
unit:
	$(GO) test -count=1 ./...

demo: deps $(KUBE)
	@if [ "$$(id -u)" != 0 ]; then echo "make demo needs root: it creates network namespaces and iptables rules. Run: sudo make demo"; exit 1; fi
	$(GO) run ./internal/demo $(DEMO_FLAGS)

# bench measures the sidecar pair against the direct path and an HAProxy pair
# (root; about 10 minutes): a table of medians with ratios, and JSON and a
# chart in bench/results/. BENCH_FLAGS passes flags (go run ./bench -help).
bench: deps $(FORTIO)
	@if [ "$$(id -u)" != 0 ]; then echo "make bench needs root: it creates network namespaces and iptables rules. Run: sudo make bench"; exit 1; fi
	$(GO) run ./bench -fortio $(FORTIO) $(BENCH_FLAGS)

# soak runs TestSoak for SOAK_DURATION (the issue's 20 minutes; make test
# runs it for 60 s): 300 req/s of HTTP/1.1 (kept-alive and a connection per
# request), gRPC streams and opaque TCP through an mTLS pair, SVIDs renewed
# every 30 s and both configs reloaded every minute. It fails on any failed
# request, and on RSS, goroutines or open descriptors of either sidecar
# ending more than 10 % off their level after warm-up. The table is in the
# output; the chart and the samples go to SOAK_OUT.
SOAK_DURATION ?= 20m
SOAK_OUT      ?= $(CURDIR)/bench/results/soak
soak: deps
	@if [ "$$(id -u)" != 0 ]; then echo "make soak needs root: it creates network namespaces and iptables rules. Run: sudo make soak"; exit 1; fi
	PILLION_SOAK_DURATION=$(SOAK_DURATION) PILLION_SOAK_ROTATE=30s PILLION_SOAK_RELOAD=1m PILLION_SOAK_OUT=$(SOAK_OUT) \
	  $(GO) test ./e2e -run '^TestSoak$$' -count=1 -v -timeout 60m

# bench-discovery runs BenchmarkDiscoveryScale (root): pillion discovery and
# a sidecar on a real API server holding DISCOVERY_SERVICES Services and
# DISCOVERY_PODS Pods (issue 13's 2,000 and 20,000), against the same with
# three Services. DISCOVERY_FLAGS adds flags (-discovery.changes,
# -discovery.settle, -discovery.heapprofile=FILE); bench/README.md says what
# it measures.
DISCOVERY_SERVICES ?= 2000
DISCOVERY_PODS     ?= 20000
bench-discovery: deps $(KUBE)
	@if [ "$$(id -u)" != 0 ]; then echo "make bench-discovery needs root: it creates network namespaces and iptables rules. Run: sudo make bench-discovery"; exit 1; fi
	KUBEBUILDER_ASSETS=$(KUBE_DIR) $(GO) test ./e2e -run '^$$' -bench BenchmarkDiscoveryScale -benchtime 1x -timeout 40m \
	  -args -discovery.services=$(DISCOVERY_SERVICES) -discovery.pods=$(DISCOVERY_PODS) $(DISCOVERY_FLAGS)

lint: $(STATICCHECK)
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) vet -tags lean ./cmd/pillion
	$(STATICCHECK) ./...
	$(STATICCHECK) -tags lean ./cmd/pillion

h2spec: $(H2SPEC)

proto: $(PROTOC_GEN_GO) $(PROTOC_GEN_GO_GRPC)
	@command -v protoc >/dev/null || hack/deps.sh --proto
	protoc --plugin=protoc-gen-go=$(PROTOC_GEN_GO) --plugin=protoc-gen-go-grpc=$(PROTOC_GEN_GO_GRPC) \
	  --go_out=. --go_opt=paths=source_relative --go-grpc_out=. --go-grpc_opt=paths=source_relative \
	  $$(find api -name '*.proto')

$(PROTOC_GEN_GO):
	@mkdir -p $(TOOLS_DIR)
	GOBIN=$(TOOLS_DIR) $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)

$(PROTOC_GEN_GO_GRPC):
	@mkdir -p $(TOOLS_DIR)
	GOBIN=$(TOOLS_DIR) $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)

spire: $(SPIRE)

jaeger: $(JAEGER)

$(JAEGER):
	hack/build-jaeger.sh $(JAEGER_VERSION) $@

kustomize: $(KUSTOMIZE)

kube: $(KUBE)

prometheus: $(PROMETHEUS)

$(PROMETHEUS):
	hack/build-prometheus.sh $(PROMETHEUS_VERSION) $(PROMETHEUS)

$(KUBE):
	hack/build-kube.sh $(KUBE_VERSION) $(ETCD_VERSION) $(KUBE_DIR)

$(CERT_MANAGER_CRDS):
	@src=$$($(GO) mod download -json github.com/cert-manager/cert-manager@$(CERT_MANAGER_VERSION) | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$$/\1/p'); \
	  test -d "$$src/deploy/crds" || { echo "cert-manager $(CERT_MANAGER_VERSION): no deploy/crds in $$src" >&2; exit 1; }; \
	  mkdir -p $@ && cp "$$src"/deploy/crds/cert-manager.io_*.yaml $@/ && chmod -R u+w $@

$(SPIRE):
	hack/build-spire.sh $(SPIRE_VERSION) $(SPIRE_DIR)

$(H2SPEC):
	@mkdir -p $(TOOLS_DIR)
	GOBIN=$(TOOLS_DIR) $(GO) install github.com/summerwind/h2spec/cmd/h2spec@$(H2SPEC_VERSION)

$(KUSTOMIZE):
	@mkdir -p $(TOOLS_DIR)
	GOBIN=$(TOOLS_DIR) $(GO) install sigs.k8s.io/kustomize/kustomize/v5@$(KUSTOMIZE_VERSION)

$(FORTIO):
	@mkdir -p $(TOOLS_DIR)
	GOBIN=$(TOOLS_DIR) $(GO) install fortio.org/fortio@$(FORTIO_VERSION)

$(STATICCHECK):
	@mkdir -p $(TOOLS_DIR)
	GOBIN=$(TOOLS_DIR) $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)

clean:
	rm -rf bin $(CACHE_DIR)
	@for ns in $$(ip netns list 2>/dev/null | awk '/^pilt-/{print $$1}'); do ip netns del $$ns; done
