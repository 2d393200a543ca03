#!/usr/bin/env bash
# Install what is missing, build sigild and start it on the embedded SoftHSM default:
# a token under ./.sigild (created on first run, with ES256, PS256 and EdDSA keys), serving
# gRPC over mutual TLS on 127.0.0.1:7711 with a dev CA and client certificate in ./.sigild (which
# the client commands use by default) and on the Unix socket ./.sigild/sigild.sock.
#   scripts/dev.sh [sigild dev options, e.g. --state-dir DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --release --quiet --bin sigild
exec target/release/sigild dev "$@"
