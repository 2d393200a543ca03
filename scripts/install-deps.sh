#!/usr/bin/env bash
# Install what sigild needs on a Debian machine, only what is missing (idempotent, quiet).
#   scripts/install-deps.sh          build + run deps (SoftHSM2, protoc, PC/SC headers), and
#                                    p11-kit + p11-kit-modules (`p11-kit server` and
#                                    p11-kit-client.so: the peer row of `sigild bench`)
#   scripts/install-deps.sh --test   also the test tools: OpenSC (pkcs11-tool), openssl,
#                                    pcscd + vsmartcard-vpcd + Yubico tools (virtual YubiKey),
#                                    openCryptoki (a second PKCS#11 implementation; the tests
#                                    configure and start its pkcsslotd with scripts/ock-up.sh),
#                                    Python jwcrypto/cryptography (independent verifiers and
#                                    JWE producer, pinned),
#                                    PyKCS11 (non-extractable keys made outside sigild),
#                                    libp11-kit-dev (<p11-kit/pkcs11.h> for the tests'
#                                    fault-injecting PKCS#11 module, built with cc),
#                                    Node peers in tests/node (npm ci: jose, oidc-provider)
#                                    and examples/oidc-provider (npm ci, its test),
#                                    cargo-nextest and cargo-deny,
#                                    systemd (systemd-analyze for the unit file)
set -euo pipefail

SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
want_test=0
[ "${1:-}" = "--test" ] && want_test=1

pkgs=(softhsm2 protobuf-compiler pkg-config libpcsclite-dev ca-certificates p11-kit p11-kit-modules)
if [ $want_test = 1 ]; then
    pkgs+=(opensc openssl pcscd vsmartcard-vpcd yubico-piv-tool ykcs11 yubikey-manager opencryptoki python3 libp11-kit-dev)
fi

if [ $want_test = 1 ]; then
    # systemd-analyze: scripts/check-systemd-unit.sh checks hsm-config/sigild.service
    pkgs+=(systemd)
fi

missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "install-deps: installing ${missing[*]}" >&2
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
    echo "install-deps: no Rust toolchain found; install one with rustup (Rust >= 1.89), then re-run" >&2
    exit 1
fi

if [ $want_test = 1 ]; then
    # Pinned, so that a new release cannot change what the independent verifiers and JWE
    # producers accept (wheels exist for Python 3.11 on glibc >= 2.28, i.e. Debian 12).
    py_pins=(jwcrypto==1.6.1 cryptography==50.0.2 PyKCS11==1.5.20 http-message-signatures==3.0.0 http-sf==1.5.0 prometheus-client==0.26.0)
    if ! python3 - "${py_pins[@]}" 2>/dev/null <<'PY'
import sys
from importlib.metadata import version
sys.exit(any(version(n) != v for n, v in (p.split("==") for p in sys.argv[1:])))
PY
    then
        echo "install-deps: installing Python ${py_pins[*]} (independent verifiers, JWE producer; keys made by another tool; the Prometheus text parser)" >&2
        python3 -m pip install --quiet --disable-pip-version-check "${py_pins[@]}" 2>/dev/null \
            || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages "${py_pins[@]}" \
            || { $SUDO apt-get install -y -qq python3-jwcrypto python3-cryptography python3-pykcs11 python3-prometheus-client >/dev/null; }
    fi
    # Node peers (tests/node): node jose and the OpenID Provider, exactly as package-lock.json
    # pins them; re-installed whenever the lock file changes.
    if ! command -v npm >/dev/null; then
        echo "install-deps: installing Node.js and npm (Debian packages)" >&2
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
    fi
    # The same for examples/oidc-provider (node-oidc-provider on sigild, run by test.sh).
    here="$(cd "$(dirname "$0")/.." && pwd)"
    for node_dir in tests/node examples/oidc-provider; do
        if ! cmp -s "$here/$node_dir/package-lock.json" "$here/$node_dir/node_modules/.package-lock.json.installed" 2>/dev/null; then
            echo "install-deps: installing the Node packages of $node_dir (npm ci)" >&2
            npm ci --prefix "$here/$node_dir" --no-audit --no-fund --loglevel=error >/dev/null
            cp "$here/$node_dir/package-lock.json" "$here/$node_dir/node_modules/.package-lock.json.installed"
        fi
    done
    if ! cargo nextest --version >/dev/null 2>&1; then
        echo "install-deps: installing cargo-nextest" >&2
        cargo install --quiet --locked cargo-nextest
    fi
    # cargo-deny: licenses, bans and sources of the dependency graph (deny.toml). Pinned so a new
    # release cannot change what CI checks; 0.20 needs Rust >= 1.88. Building it takes about
    # 8 minutes on 2 cores (7 min of CPU), once per machine.
    CARGO_DENY_VERSION=0.20.2
    if ! cargo deny --version 2>/dev/null | grep -qx "cargo-deny $CARGO_DENY_VERSION"; then
        echo "install-deps: installing cargo-deny $CARGO_DENY_VERSION" >&2
        cargo install --quiet --locked "cargo-deny@$CARGO_DENY_VERSION"
    fi
fi
