# One image for every role: the init container (`pillion init`, as root with
# NET_ADMIN and NET_RAW), the sidecar (`pillion proxy`, UID 1337) and the
# injector (`pillion injector`, UID 65532). The pod spec picks the user, so no
# USER is set here.
#
#   docker build -t ghcr.io/pillionmesh/pillion:v0.1.0 --build-arg VERSION=v0.1.0 .

FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -buildvcs=false -ldflags "-s -w -X main.version=${VERSION}" \
	-o /pillion ./cmd/pillion

# Not distroless: `pillion init` drives iptables and ip6tables (through
# go-iptables), so the image carries them. Debian's iptables package has both
# backends: iptables/ip6tables (nft, the default alternative) and
# iptables-legacy/ip6tables-legacy.
FROM debian:bookworm-slim
RUN apt-get update \
	&& apt-get install -y --no-install-recommends iptables \
	&& rm -rf /var/lib/apt/lists/*
COPY --from=build /pillion /usr/local/bin/pillion
ENTRYPOINT ["pillion"]
