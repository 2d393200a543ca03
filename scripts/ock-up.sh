#!/usr/bin/env bash
# Bring up openCryptoki's software token (Debian package `opencryptoki`) as a second, independent
# PKCS#11 implementation for sigild's tests:
#
#   scripts/ock-up.sh WORKDIR            configure soft-token slots, start pkcsslotd, initialise
#                                        every token (label, SO PIN, user PIN)
#   scripts/ock-up.sh --daemon WORKDIR   only start pkcsslotd again on the configuration and tokens
#                                        a full ock-up.sh left (after ock-down.sh --daemon)
#
# Undo with scripts/ock-down.sh WORKDIR. Environment:
#   OCK_LABEL   label of the first token (default sigild-ock); token i > 0 is "$OCK_LABEL-$i"
#   OCK_TOKENS  number of soft tokens, one slot each (default 1)
#
# WORKDIR receives so.pin and user.pin (kept if already there, else 8 random digits; the soft
# token takes PINs of 4 to 8 characters), pkcsslotd.pid, toknames, pkcsconf.log, and `env` with
# OCK_MODULE and OCK_LABELS for scripts. PINs go to pkcsconf on its standard input, never on a
# command line, and are never printed.
#
# What openCryptoki 3.8.1 fixes and this script therefore has to touch: the slot daemon reads
# only /etc/opencryptoki/opencryptoki.conf (no override), keeps token data in
# /var/lib/opencryptoki/<tokname>, locks in /var/lock/opencryptoki/<tokname>, and one pkcsslotd
# serves the whole machine. The package's own config lists TPM, ICA, CCA, soft and EP11 slots;
# this one lists only soft tokens, each with its own `tokname` (3.8's multi-token support), so
# several tokens are independent. The original config is kept as
# /etc/opencryptoki/opencryptoki.conf.sigild-orig and put back by ock-down.sh. Every soft token
# reports serial "123": tell them apart by label.
#
# pkcsslotd runs as root in the pkcs11 group (the package creates the group). If a pkcsslotd
# that this script did not start is running (e.g. the package's systemd unit), the script says
# so and fails instead of touching it: stop it first with `systemctl stop pkcsslotd`.
set -euo pipefail

daemon_only=0
if [ "${1:-}" = "--daemon" ]; then
    daemon_only=1
    shift
fi
W=${1:?usage: ock-up.sh [--daemon] WORKDIR}
LABEL=${OCK_LABEL:-sigild-ock}
TOKENS=${OCK_TOKENS:-1}
CONF=/etc/opencryptoki/opencryptoki.conf
ORIG=$CONF.sigild-orig
LIB=/var/lib/opencryptoki
LOCK=/var/lock/opencryptoki
# The default SO PIN of a freshly created openCryptoki token (documented by openCryptoki).
DEFAULT_SO_PIN=87654321
die() { echo "ock-up: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (pkcsslotd, /etc/opencryptoki and /var/lib/opencryptoki)"
command -v pkcsslotd >/dev/null || die "openCryptoki is not installed (apt-get install opencryptoki)"
command -v pkcsconf >/dev/null || die "openCryptoki is not installed (apt-get install opencryptoki)"
getent group pkcs11 >/dev/null || die "group pkcs11 missing; reinstall the opencryptoki package"
MODULE=$(ls /usr/lib/*/pkcs11/libopencryptoki.so 2>/dev/null | head -n 1)
[ -n "$MODULE" ] || die "libopencryptoki.so not found under /usr/lib/*/pkcs11"
case "$TOKENS" in ''|*[!0-9]*|0) die "OCK_TOKENS must be a positive number" ;; esac

mkdir -p "$W"
W=$(cd "$W" && pwd)

if pids=$(pgrep -x pkcsslotd); then
    ours=$(cat "$W/pkcsslotd.pid" 2>/dev/null || true)
    if [ -n "$ours" ] && [ "$pids" = "$ours" ]; then
        die "the pkcsslotd this script started for $W is still running (pid $ours); run ock-down.sh first"
    fi
    die "a pkcsslotd that this script did not start is running (pid $(echo $pids)); stop it first (systemctl stop pkcsslotd) — not touching it"
fi

# Directories the package creates through tmpfiles.d at boot; /var/lock is often a tmpfs.
install -d -m 0770 -g pkcs11 "$LIB" "$LOCK" /var/log/opencryptoki

start_daemon() {
    rm -f /run/pkcsslotd.socket
    pkcsslotd || die "pkcsslotd failed to start"
    local pid=""
    for _ in $(seq 100); do
        pid=$(cat /run/pkcsslotd.pid 2>/dev/null || true)
        if [ -n "$pid" ] && grep -qx pkcsslotd "/proc/$pid/comm" 2>/dev/null && [ -S /run/pkcsslotd.socket ]; then
            echo "$pid" > "$W/pkcsslotd.pid"
            return 0
        fi
        sleep 0.05
    done
    die "pkcsslotd did not come up (no /run/pkcsslotd.socket after 5 s); see syslog"
}

if [ $daemon_only = 1 ]; then
    [ -f "$W/toknames" ] && [ -f "$ORIG" ] || die "no configuration from a full ock-up.sh for $W"
    start_daemon
    echo "ock-up: pkcsslotd started again (pid $(cat "$W/pkcsslotd.pid"))"
    exit 0
fi

# Keep the original config once; a backup left by an earlier run that was not taken down is
# the original already.
[ -f "$ORIG" ] || cp -p "$CONF" "$ORIG"

new_pin() {
    local f=$1
    if [ ! -s "$f" ]; then
        (umask 077; printf '%08d\n' $(( $(od -An -N4 -tu4 /dev/urandom) % 100000000 )) > "$f")
    fi
    chmod 600 "$f"
    local len
    len=$(head -n 1 "$f" | tr -d '\n' | wc -c)
    [ "$len" -ge 4 ] && [ "$len" -le 8 ] || die "$f: the soft token takes PINs of 4 to 8 characters"
}
new_pin "$W/so.pin"
new_pin "$W/user.pin"

: > "$W/toknames"
labels=()
{
    echo "version opencryptoki-3.1"
    echo "# written by sigild scripts/ock-up.sh for $W; the original is $ORIG"
    for i in $(seq 0 $((TOKENS - 1))); do
        tok="sigild-ock$i"
        echo "$tok" >> "$W/toknames"
        printf 'slot %d\n{\nstdll = libpkcs11_sw.so\ntokname = %s\ndescription = "sigild test soft token %d"\n}\n' "$i" "$tok" "$i"
    done
} > "$CONF.new"
mv "$CONF.new" "$CONF"
while read -r tok; do
    # Token data of an earlier run that was not taken down: this script's own, start afresh.
    rm -rf "${LIB:?}/$tok" "${LOCK:?}/$tok" "/dev/shm/var.lib.opencryptoki.$tok"
    install -d -m 0770 -g pkcs11 "$LIB/$tok" "$LIB/$tok/TOK_OBJ" "$LOCK/$tok"
done < "$W/toknames"

start_daemon

: > "$W/pkcsconf.log"
so=$(head -n 1 "$W/so.pin")
user=$(head -n 1 "$W/user.pin")
conf() { # slot, option; stdin: the answers to pkcsconf's prompts
    pkcsconf "$2" -c "$1" >> "$W/pkcsconf.log" 2>&1 \
        || die "pkcsconf $2 -c $1 failed; see $W/pkcsconf.log"
}
for i in $(seq 0 $((TOKENS - 1))); do
    label=$LABEL
    [ "$i" = 0 ] || label="$LABEL-$i"
    labels+=("$label")
    printf '%s\n%s\n' "$DEFAULT_SO_PIN" "$label" | conf "$i" -I
    printf '%s\n%s\n%s\n' "$DEFAULT_SO_PIN" "$so" "$so" | conf "$i" -P
    printf '%s\n%s\n%s\n' "$so" "$user" "$user" | conf "$i" -u
done
unset so user

printf 'OCK_MODULE=%s\nOCK_LABELS="%s"\n' "$MODULE" "${labels[*]}" > "$W/env"
echo "ock-up: pkcsslotd pid $(cat "$W/pkcsslotd.pid"); module $MODULE; tokens: ${labels[*]}; PINs in $W/user.pin (user) and $W/so.pin (SO)"
