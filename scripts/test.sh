#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what is missing, then
#   1. cargo fmt --check and clippy (-D warnings)
#   2. unit + integration tests (real SoftHSM tokens per test, independent verifiers)
#   3. the virtual YubiKey: unit tests, then end to end through pcscd + vpcd with Yubico's tools
#      (needs root for pcscd; set SIGILD_SKIP_YUBIKEY_E2E=1 to skip on a workstation)
#   4. a short `sigild bench` smoke run (figures come from scripts/bench.sh, not from here)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh --test

echo "== fmt + clippy"
cargo fmt --check
cargo clippy --quiet --all-targets -- -D warnings
cargo check --quiet --no-default-features --features client && cargo build --quiet --examples && [ "$(cargo tree --no-default-features --features client -e normal | grep -c cryptoki)" = 0 ]

echo "== sigild tests"
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --no-fail-fast
else
    cargo test --no-fail-fast
fi

echo "== virtual YubiKey"
cargo test --release --quiet --manifest-path tests/virtual-yubikey/Cargo.toml
if [ "${SIGILD_SKIP_YUBIKEY_E2E:-0}" != 1 ]; then
    tests/virtual-yubikey/e2e.sh
fi

echo "== bench smoke"
cargo run --quiet --bin sigild -- bench --seconds 0.2 --algs ES256 --clients 1 2>/dev/null
