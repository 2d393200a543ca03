#!/usr/bin/env bash
# Stop what scripts/vyk-up.sh WORKDIR started, and only that: the pids recorded in WORKDIR,
# each checked to still be the program that was started.
#
#   scripts/vyk-down.sh WORKDIR
set -uo pipefail

W=${1:?usage: vyk-down.sh WORKDIR}

stop() { # pidfile expected-command-name
    local file=$W/$1 name=$2 pid
    [ -f "$file" ] || return 0
    pid=$(cat "$file")
    if [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] && grep -q "$name" "/proc/$pid/comm"; then
        kill -TERM "$pid" 2>/dev/null
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            echo "vyk-down: $name ($pid) did not stop on TERM, sending KILL" >&2
            kill -KILL "$pid" 2>/dev/null
        fi
    fi
    rm -f "$file"
}

stop vyk.pid virtual-yubik   # /proc/PID/comm is cut to 15 characters
stop pcscd.pid pcscd
exit 0
