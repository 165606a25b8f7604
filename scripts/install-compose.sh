#!/usr/bin/env bash
# Install the `docker compose` CLI plugin (client only; no engine) so tests can run
# `docker compose config` on docker-compose.yml. Built from the Go module proxy, since the
# machines reach package registries but not GitHub release downloads.
set -euo pipefail
VERSION="${COMPOSE_VERSION:-v2.40.3}"
DEST="${HOME}/.docker/cli-plugins/docker-compose"
if docker compose version >/dev/null 2>&1; then
  exit 0
fi
command -v go >/dev/null || { echo "install-compose: Go is needed to build docker compose (apt-get install golang)"; exit 1; }
dir=$(go mod download -json "github.com/docker/compose/v2@${VERSION}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
work=$(mktemp -d)
cp -r "$dir"/. "$work"/
chmod -R u+w "$work"
mkdir -p "$(dirname "$DEST")"
(cd "$work" && CGO_ENABLED=0 go build -trimpath -o "$DEST" ./cmd)
rm -rf "$work"
docker compose version
