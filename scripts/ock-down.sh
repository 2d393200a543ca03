#!/usr/bin/env bash
# Undo scripts/ock-up.sh WORKDIR, and only what it did:
#
#   scripts/ock-down.sh WORKDIR            stop the pkcsslotd it started, remove the soft tokens
#                                          it created, put the original opencryptoki.conf back
#   scripts/ock-down.sh --daemon WORKDIR   only stop that pkcsslotd (tokens and config stay, for
#                                          ock-up.sh --daemon)
#
# The pkcsslotd stopped is the pid recorded in WORKDIR, checked to still be pkcsslotd.
set -uo pipefail

daemon_only=0
if [ "${1:-}" = "--daemon" ]; then
    daemon_only=1
    shift
fi
W=${1:?usage: ock-down.sh [--daemon] WORKDIR}
CONF=/etc/opencryptoki/opencryptoki.conf
ORIG=$CONF.sigild-orig

if [ -f "$W/pkcsslotd.pid" ]; then
    pid=$(cat "$W/pkcsslotd.pid")
    if [ -n "$pid" ] && grep -qx pkcsslotd "/proc/$pid/comm" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null
        # pkcsslotd takes a second or two to notice and clean up its socket and shared memory.
        for _ in $(seq 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            echo "ock-down: pkcsslotd ($pid) did not stop on TERM, sending KILL" >&2
            kill -KILL "$pid" 2>/dev/null
        fi
        # Wait until it is really gone (or a zombie): ock-up.sh refuses to start while a
        # pkcsslotd it did not start is running, so the next test must not see this one.
        for _ in $(seq 100); do
            state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null || true)
            { [ -z "$state" ] || [ "$state" = Z ]; } && break
            sleep 0.1
        done
    fi
    # pkcsslotd leaves its pid file behind; remove it only when it is the one we stopped.
    if [ "$(cat /run/pkcsslotd.pid 2>/dev/null)" = "$pid" ]; then
        rm -f /run/pkcsslotd.pid
    fi
    rm -f "$W/pkcsslotd.pid"
fi
[ $daemon_only = 1 ] && exit 0

if [ -f "$W/toknames" ]; then
    while read -r tok; do
        case "$tok" in
            sigild-ock*) rm -rf "/var/lib/opencryptoki/$tok" "/var/lock/opencryptoki/$tok" \
                                "/dev/shm/var.lib.opencryptoki.$tok" ;;
        esac
    done < "$W/toknames"
    rm -f "$W/toknames"
    if [ -f "$ORIG" ] && grep -q "written by sigild scripts/ock-up.sh" "$CONF" 2>/dev/null; then
        mv "$ORIG" "$CONF"
    fi
fi
exit 0
