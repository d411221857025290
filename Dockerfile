# Two images from one build:
#
#   proxy    what runs in the application's pod: the init container
#            (`pillion init`, as root with NET_ADMIN and NET_RAW) and the sidecar
#            (`pillion proxy`, UID 1337). Its `pillion` is the lean build (tag
#            lean: init, proxy, wait, identity, version), which links no
#            Kubernetes API machinery: about 16 MB of RSS idle instead of 40.
#   control  the control plane and the CLI: `pillion injector`,
#            `pillion discovery` (UID 65532), `pillion inject`; every
#            subcommand. The last stage, so the default target.
#
#   docker build --target proxy -t ghcr.io/pillionmesh/pillion-proxy:v0.1.0 --build-arg VERSION=v0.1.0 .
#   docker build -t ghcr.io/pillionmesh/pillion:v0.1.0 --build-arg VERSION=v0.1.0 .
#
# The pod specs pick the users, so no USER is set here.

FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -buildvcs=false -ldflags "-s -w -X main.version=${VERSION}" \
	-o /pillion ./cmd/pillion \
	&& CGO_ENABLED=0 go build -tags lean -trimpath -buildvcs=false -ldflags "-s -w -X main.version=${VERSION}" \
	-o /lean/pillion ./cmd/pillion

# Not distroless: `pillion init` drives iptables and ip6tables (through
# go-iptables), so the image carries them. Debian's iptables package has both
# backends: iptables/ip6tables (nft, the default alternative) and
# iptables-legacy/ip6tables-legacy.
FROM debian:bookworm-slim AS proxy
RUN apt-get update \
	&& apt-get install -y --no-install-recommends iptables \
	&& rm -rf /var/lib/apt/lists/*
COPY --from=build /lean/pillion /usr/local/bin/pillion
ENTRYPOINT ["pillion"]

FROM debian:bookworm-slim AS control
COPY --from=build /pillion /usr/local/bin/pillion
ENTRYPOINT ["pillion"]
