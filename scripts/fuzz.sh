#!/usr/bin/env bash
# Coverage-guided fuzzing (cargo fuzz / libFuzzer) of the parsers of untrusted input: the JWS
# header check and the PKCS#11 URI parser (targets in fuzz/fuzz_targets). Not part of test.sh:
# the property tests and tests/grpc_fuzz.rs cover the same code on every run; this is the
# longer, coverage-guided search.
#
#   scripts/fuzz.sh                  every target, SIGILD_FUZZ_SECONDS (default 60) each
#   scripts/fuzz.sh pkcs11_uri       one target
#
# cargo fuzz needs compiler features of nightly Rust (sanitizers, coverage instrumentation);
# on the stable toolchain RUSTC_BOOTSTRAP=1 unlocks them. A crash leaves its input under
# fuzz/artifacts/<target>/; replay it with `RUSTC_BOOTSTRAP=1 cargo fuzz run <target> <file>`,
# fix the code, and add the input as a regression test beside the parser.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo-fuzz >/dev/null; then
    cargo install cargo-fuzz --locked
fi
export RUSTC_BOOTSTRAP=1
seconds="${SIGILD_FUZZ_SECONDS:-60}"

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi

for t in "${targets[@]}"; do
    echo "== fuzz $t for ${seconds}s"
    mkdir -p "fuzz/corpus/$t"
    # The first directory collects the corpus; the seeds are read only.
    cargo fuzz run -O "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
        -max_total_time="$seconds" -print_final_stats=1
done
