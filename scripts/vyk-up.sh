#!/usr/bin/env bash
# Start a private pcscd with the vpcd reader and the virtual YubiKey behind it.
#
#   scripts/vyk-up.sh WORKDIR [virtual-yubikey options...]
#
# WORKDIR receives reader.conf.d/, pcscd.log, vyk.log, pcscd.pid and vyk.pid; stop everything
# with scripts/vyk-down.sh WORKDIR. The reader is named "Yubico YubiKey OTP+FIDO+CCID" so that
# yubico-piv-tool, ykcs11 and ykman detect it (notes §3). Environment:
#   VYK_BIN       emulator binary (default: build tests/virtual-yubikey in release mode)
#   VYK_PORT      vpcd port (default 35963, the reader "... 00 00")
#   VYK_LOG_LEVEL emulator log level (default debug: APDU trace, secrets redacted)
# pcscd must run as root and only one pcscd can run at a time: if another one is running, this
# script says so and fails instead of touching it.
set -euo pipefail

W=${1:?usage: vyk-up.sh WORKDIR [virtual-yubikey options...]}
shift
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PORT=${VYK_PORT:-35963}
LEVEL=${VYK_LOG_LEVEL:-debug}
die() { echo "vyk-up: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "pcscd must run as root (it needs /run/pcscd)"
command -v pcscd >/dev/null || die "pcscd not installed (apt-get install pcscd vsmartcard-vpcd)"
[ -e /usr/lib/pcsc/drivers/serial/libifdvpcd.so ] || die "vpcd driver missing (apt-get install vsmartcard-vpcd)"
if pids=$(pgrep -x pcscd); then
    die "a pcscd that this script did not start is already running (pid $(echo $pids)); stop it first — not touching it"
fi

mkdir -p "$W/reader.conf.d"
W=$(cd "$W" && pwd)
cat > "$W/reader.conf.d/vpcd" <<CONF
FRIENDLYNAME "Yubico YubiKey OTP+FIDO+CCID"
DEVICENAME   /dev/null:$PORT
LIBPATH      /usr/lib/pcsc/drivers/serial/libifdvpcd.so
CHANNELID    $PORT
CONF

if [ -z "${VYK_BIN:-}" ]; then
    cargo build --release --quiet --manifest-path "$ROOT/tests/virtual-yubikey/Cargo.toml"
    VYK_BIN="$ROOT/tests/virtual-yubikey/target/release/virtual-yubikey"
fi
[ -x "$VYK_BIN" ] || die "emulator binary $VYK_BIN not found"

pcscd --foreground -c "$W/reader.conf.d" > "$W/pcscd.log" 2>&1 &
echo $! > "$W/pcscd.pid"
"$VYK_BIN" --port "$PORT" --log "$W/vyk.log" --log-level "$LEVEL" "$@" &
echo $! > "$W/vyk.pid"

# Wait (at most 10 s) until the card is present in the reader.
for _ in $(seq 100); do
    kill -0 "$(cat "$W/pcscd.pid")" 2>/dev/null || die "pcscd exited; see $W/pcscd.log"
    kill -0 "$(cat "$W/vyk.pid")" 2>/dev/null || die "virtual-yubikey exited; see $W/vyk.log"
    if opensc-tool -l 2>/dev/null | grep -q '^[0-9]* *Yes .*Yubico YubiKey'; then
        echo "vyk-up: card present (pcscd pid $(cat "$W/pcscd.pid"), virtual-yubikey pid $(cat "$W/vyk.pid"))"
        exit 0
    fi
    sleep 0.1
done
die "card not present after 10 s; see $W/pcscd.log and $W/vyk.log (stop with vyk-down.sh $W)"
