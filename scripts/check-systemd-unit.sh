#!/usr/bin/env bash
# Check hsm-config/sigild.service as systemd reads it: `systemd-analyze verify` must print
# nothing (an unknown or misspelt directive is only a warning there, so any output fails), and
# `systemd-analyze security --offline=yes` must rate the sandbox at exposure 2.0 or better.
# verify also checks that ExecStart= names an executable, so the unit is checked with its
# /usr/local/bin/sigild replaced by a built binary (default: cargo's debug build, built here).
#   scripts/check-systemd-unit.sh [path/to/sigild]
set -euo pipefail
cd "$(dirname "$0")/.."

fail() {
    echo "check-systemd-unit: FAILED: $*" >&2
    exit 1
}

command -v systemd-analyze >/dev/null || fail "systemd-analyze not found (Debian package systemd; scripts/install-deps.sh --test)"
bin="${1:-}"
if [ -z "$bin" ]; then
    cargo build --quiet --bin sigild
    bin="${CARGO_TARGET_DIR:-target}/debug/sigild"
fi
bin="$(realpath "$bin")"
[ -x "$bin" ] || fail "$bin is not an executable"

dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
unit="$dir/sigild.service"
sed "s#/usr/local/bin/sigild#$bin#g" hsm-config/sigild.service >"$unit"
grep -q "^ExecStart=$bin serve " "$unit" || fail "the unit's ExecStart= no longer starts /usr/local/bin/sigild serve"

if ! out=$(systemd-analyze verify "$unit" 2>&1); then
    echo "$out" >&2
    fail "systemd-analyze verify rejected hsm-config/sigild.service"
fi
if [ -n "$out" ]; then
    echo "$out" >&2
    fail "systemd-analyze verify warned about hsm-config/sigild.service"
fi
if ! security=$(systemd-analyze security --offline=yes --threshold=20 "$unit" 2>&1); then
    echo "$security" >&2
    fail "hsm-config/sigild.service: exposure above 2.0 (or systemd-analyze security failed)"
fi
grep "Overall exposure level" <<<"$security"
echo "hsm-config/sigild.service: OK"
