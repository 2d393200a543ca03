#!/usr/bin/env bash
# Throughput and latency through the daemon vs direct PKCS#11 on the same SoftHSM token, one
# run, release build. Arguments go to `sigild bench` (e.g. --seconds 5 --clients 1,2).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --release --quiet --bin sigild
exec target/release/sigild bench "$@"
