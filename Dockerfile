# syntax=docker/dockerfile:1
#
# One image with the three effects services; the container's command picks
# one: `ingest`, `dispatcher`, `completer`, or `completer migrate`.
#
#   docker build -t effects .
#   docker run --rm effects completer migrate

# The Go of go.mod's go line; a check keeps them equal.
ARG GO_VERSION=1.26.8

FROM golang:${GO_VERSION}-alpine AS build
WORKDIR /src
ENV CGO_ENABLED=0 GOFLAGS=-trimpath
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/root/go/pkg/mod \
    go mod download
COPY . .
RUN --mount=type=cache,target=/root/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    go build -buildvcs=false -ldflags='-s -w' -o /out/ ./cmd/...

# Alpine rather than distroless: busybox wget serves the compose healthchecks
# on /healthz.
FROM alpine:3.22.1
RUN apk add --no-cache ca-certificates tzdata \
    && adduser -D -H -u 10001 effects
COPY --from=build /out/ /usr/local/bin/
USER 10001:10001
# ingest webhook; admin ports (metrics, /healthz, /readyz) of ingest,
# dispatcher and completer.
EXPOSE 8080 9090 9091 9092
CMD ["ingest"]
