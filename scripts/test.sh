#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what is missing, then
#   1. cargo fmt --check, clippy (-D warnings), rustdoc (-D warnings), cargo deny
#   2. the client-only build: library and examples without the device crates; the systemd unit
#      (scripts/check-systemd-unit.sh: systemd-analyze verify and security)
#   3. unit + integration tests (real SoftHSM tokens per test, independent verifiers), and
#      node-oidc-provider on sigild (examples/oidc-provider, node --test)
#   4. the virtual YubiKey: unit tests, then end to end through pcscd + vpcd with Yubico's tools
#      (needs root for pcscd; set SIGILD_SKIP_YUBIKEY_E2E=1 to skip on a workstation)
#   5. a short `sigild bench` smoke run with its p11-kit peer row (figures come from
#      scripts/bench.sh, not from here), a sub-second `--device-latency-ms` pool-scaling run, a
#      small `--memory` run, and a two-second `sigild bench --overload` that fails on any error
#      but RESOURCE_EXHAUSTED
#
# Every check is a command of its own, so `set -e` stops the run at the first one that fails.
# (Never chain checks with `&&`: bash ignores a failure anywhere but in the last command of an
# `&&` list, and the run would go on green.)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh --test

fail() {
    echo "test.sh: FAILED: $*" >&2
    exit 1
}

echo "== fmt"
cargo fmt --check

echo "== clippy"
cargo clippy --quiet --all-targets -- -D warnings

echo "== rustdoc"
RUSTDOCFLAGS="-D warnings" cargo doc --quiet --no-deps

echo "== cargo deny (bans, licenses, sources; advisories need the network database: see deny.toml)"
cargo deny check bans licenses sources

echo "== client-only build (what client applications depend on)"
client=(--no-default-features --features client)
# clippy type-checks like `cargo check`, and -D warnings keeps this configuration warning-free too.
cargo clippy --quiet "${client[@]}" --lib --examples -- -D warnings
cargo build --quiet "${client[@]}" --examples
RUSTDOCFLAGS="-D warnings" cargo doc --quiet --no-deps "${client[@]}"
client_tree=$(cargo tree "${client[@]}" -e normal --prefix none --format '{p}')
grep -q '^sigild ' <<<"$client_tree" || fail "cargo tree printed no graph for the client build"
if device_crates=$(grep -E '^(cryptoki|cryptoki-sys|yubikey|pcsc|pcsc-sys) ' <<<"$client_tree"); then
    fail "the client build depends on device crates: $(sort -u <<<"$device_crates" | tr '\n' ' ')"
fi

echo "== systemd unit (hsm-config/sigild.service: systemd-analyze verify and security)"
scripts/check-systemd-unit.sh

echo "== virtual YubiKey emulator (release build)"
# Built here, before the tests, rather than by the first YubiKey test through vyk-up.sh: the
# YubiKey tests run one at a time (one pcscd per machine) and are the longest chain of the run, so
# a build inside the first of them (about two minutes next to the other tests) lengthens the
# whole run by as much. VYK_BIN tells vyk-up.sh not to run cargo again in every test.
cargo build --release --quiet --manifest-path tests/virtual-yubikey/Cargo.toml
export VYK_BIN="$PWD/tests/virtual-yubikey/target/release/virtual-yubikey"

echo "== sigild tests"
# nextest fails a run that executes no test (--no-tests=fail), e.g. when a filter or a feature
# gate leaves nothing to run; install-deps.sh --test installs it.
cargo nextest run --no-fail-fast --no-tests=fail

echo "== node-oidc-provider on sigild (examples/oidc-provider)"
# The adapter's own test (node --test): a throw-away `sigild dev`, full FAPI 2.0 logins through
# node-oidc-provider with the OP key rotated in the middle. It runs the debug sigild built above.
cargo build --quiet --bin sigild
SIGILD_BIN="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')/debug/sigild"
export SIGILD_BIN
(cd examples/oidc-provider && node --test test/*.test.mjs) || fail "examples/oidc-provider: node --test"

echo "== virtual YubiKey"
cargo nextest run --release --no-tests=fail --manifest-path tests/virtual-yubikey/Cargo.toml
if [ "${SIGILD_SKIP_YUBIKEY_E2E:-0}" != 1 ]; then
    tests/virtual-yubikey/e2e.sh
fi

echo "== bench smoke"
# The bench logs the daemon's start-up and shutdown on stderr: keep it out of the CI log unless
# the run fails. It exits 0 with failed operations counted in the `errors` column, so check the
# table too: ES256 signing rows and the two default JWE decryption rows (RSA-OAEP-256,
# ECDH-ES+A256KW), every one with operations and no errors.
bench_err=$(mktemp)
trap 'rm -f "$bench_err"' EXIT
if ! bench_out=$(cargo run --quiet --bin sigild -- bench --seconds 0.2 --algs ES256 --clients 1 2>"$bench_err"); then
    echo "$bench_out"
    cat "$bench_err" >&2
    fail "sigild bench exited non-zero"
fi
echo "$bench_out"
# (rows only: the ratio table after them has `|` between its columns)
awk '!/\|/ { if ($1 == "ES256" || $1 == "RSA-OAEP-256" || $1 == "ECDH-ES+A256KW") {
         rows[$1]++; if ($NF != 0 || $(NF-4) <= 0) bad++ } }
     END { if (!rows["ES256"] || !rows["RSA-OAEP-256"] || !rows["ECDH-ES+A256KW"] || bad > 0) exit 1 }' <<<"$bench_out" \
    || { cat "$bench_err" >&2; fail "bench smoke: a missing ES256 or decryption row, or a row with errors or no operations"; }

# The p11-kit peer row must be there too (p11-kit is installed by install-deps.sh).
grep -q '^ES256 .* p11-kit client ' <<<"$bench_out" \
    || { cat "$bench_err" >&2; fail "bench smoke: no p11-kit client row (p11-kit server or p11-kit-client.so missing?)"; }

echo "== bench device-latency smoke"
# Pool sizing through the fault-injecting module (2 ms per signature), two small session
# counts for a fraction of a second: every row present with signatures and no errors (the
# run also exits non-zero on any error); the figures themselves are not checked.
if ! latency_out=$(cargo run --quiet --bin sigild -- bench --device-latency-ms 2 --sessions 1,4 --seconds 0.3 --algs ES256 2>"$bench_err"); then
    echo "$latency_out"
    cat "$bench_err" >&2
    fail "sigild bench --device-latency-ms exited non-zero"
fi
echo "$latency_out"
awk '$1 ~ /^[0-9]+$/ { if (NF >= 9) { rows++; if ($7 != 0 || $3 <= 0 || $8 <= 0) bad++ } }
     END { if (rows != 2 || bad > 0) exit 1 }' <<<"$latency_out" \
    || { cat "$bench_err" >&2; fail "bench device-latency smoke: a missing row, or one with errors or no signatures"; }

echo "== bench memory smoke"
# The daemon in its own process with 50 idle connections and 50 requests in flight, then 256
# worker sessions: every figure printed, no request failed (the run exits non-zero otherwise).
if ! memory_out=$(cargo run --quiet --bin sigild -- bench --memory --idle-connections 50 --in-flight 50 --algs ES256 2>"$bench_err"); then
    echo "$memory_out"
    cat "$bench_err" >&2
    fail "sigild bench --memory exited non-zero"
fi
echo "$memory_out"
for what in "per 1,000 idle connections" "per 1,000 in flight" "per worker" "errors: 0"; do
    grep -q "$what" <<<"$memory_out" \
        || { cat "$bench_err" >&2; fail "bench memory smoke: no \"$what\" figure"; }
done

echo "== bench overload smoke"
# Two seconds at three times the measured capacity, with a short queue so that the daemon
# answers RESOURCE_EXHAUSTED from the start. The run exits non-zero when any other error
# occurred or nothing was signed; its report is checked as well, so that a change to that exit
# path cannot let errors through.
if ! overload_out=$(cargo run --quiet --bin sigild -- bench --overload --seconds 2 --queue-depth 16 --algs ES256 2>"$bench_err"); then
    echo "$overload_out"
    cat "$bench_err" >&2
    fail "sigild bench --overload exited non-zero"
fi
echo "$overload_out"
awk '/^  other errors: / { lines++; if ($NF != 0) bad++ }
     /^  accepted: / { accepted = $2 }
     END { if (lines != 1 || bad > 0 || accepted <= 0) exit 1 }' <<<"$overload_out" \
    || { cat "$bench_err" >&2; fail "bench overload smoke: an error other than RESOURCE_EXHAUSTED, or nothing signed"; }
