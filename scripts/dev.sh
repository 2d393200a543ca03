#!/usr/bin/env bash
# Install what is missing, build sigild and start it on the embedded SoftHSM default:
# a token under ./.sigild (created on first run, with ES256, PS256 and EdDSA keys), serving
# gRPC on 127.0.0.1:7711, which the client commands use by default.
#   scripts/dev.sh [sigild dev options, e.g. --state-dir DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --release --quiet --bin sigild
exec target/release/sigild dev "$@"
