#!/usr/bin/env bash
# End-to-end test of the virtual YubiKey through the real PC/SC stack (pcscd + vpcd), driven
# by Yubico's own tools: yubico-piv-tool, ykman, ykcs11 (via pkcs11-tool), checked with OpenSSL.
# Runs once per firmware (5.4.3: 3DES default management key; 5.7.1: AES-192).
#
#   sudo tests/virtual-yubikey/e2e.sh            # VYK_KEEP=1 keeps the temp dir with the logs
#
# Needs root (pcscd) and: pcscd vsmartcard-vpcd opensc yubico-piv-tool ykcs11 yubikey-manager
# openssl. Everything it starts it stops (trap). Prints "N passed, M failed"; exits non-zero on
# any failure.
set -uo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
MGM=010203040506070801020304050607080102030405060708
YKCS11=${YKCS11:-/usr/lib/x86_64-linux-gnu/libykcs11.so}
PASS=0
FAIL=0
UP_DIRS=()

TMP=$(mktemp -d /tmp/vyk-e2e.XXXXXX)
cleanup() {
    for d in "${UP_DIRS[@]}"; do "$ROOT/scripts/vyk-down.sh" "$d"; done
    if [ "${VYK_KEEP:-0}" = 1 ] || [ "$FAIL" -gt 0 ]; then
        echo "logs kept in $TMP"
    else
        rm -rf "$TMP"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# check NAME CMD...: run CMD with its output in the step log; count pass/fail.
STEP=0
check() {
    local name=$1
    shift
    STEP=$((STEP + 1))
    local log="$W/step-$(printf %02d $STEP).log"
    if (cd "$W" && "$@") >"$log" 2>&1; then
        PASS=$((PASS + 1))
        echo "ok     [$FW] $name"
    else
        FAIL=$((FAIL + 1))
        echo "FAILED [$FW] $name (see $log)"
        sed 's/^/        /' "$log" | tail -n 15
        return 1
    fi
}
# expect_fail NAME CMD...: the command must fail (a limitation a real key shows too).
expect_fail() {
    local name=$1
    shift
    check "$name" bash -c '! "$@"' _ "$@"
}
has() { grep -q -- "$1"; }

for tool in pcscd opensc-tool yubico-piv-tool ykman pkcs11-tool openssl; do
    command -v "$tool" >/dev/null || { echo "missing tool: $tool"; echo "0 passed, 1 failed"; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "must run as root (pcscd)"; echo "0 passed, 1 failed"; exit 1; }

start=$(date +%s)
cargo build --release --quiet --manifest-path "$HERE/Cargo.toml" || { echo "0 passed, 1 failed"; exit 1; }
echo "emulator built in $(( $(date +%s) - start )) s"
export VYK_BIN="$HERE/target/release/virtual-yubikey"

run_firmware() {
    FW=$1
    SERIAL=$2
    W="$TMP/$FW"
    mkdir -p "$W"
    UP_DIRS+=("$W")
    local up=("$W" --version "$FW" --serial "$SERIAL" --state "$W/state.json"
        --export-attestation-root "$W/root.pem" --touch accept --touch-delay-ms 100)
    # Without our own stack every later step would talk to whatever card is there (another
    # pcscd's): stop here rather than lock or reset someone else's key.
    if ! check "stack up (pcscd + vpcd + emulator, card present)" "$ROOT/scripts/vyk-up.sh" "${up[@]}"; then
        echo "$PASS passed, $FAIL failed"
        echo "e2e: aborted: the PC/SC stack did not come up" >&2
        exit 1
    fi
    YK=(ykman --device "$SERIAL")

    # yubico-piv-tool
    check "yubico-piv-tool -a status" bash -c \
        "yubico-piv-tool -a status | tee status.txt && grep -q 'Serial Number:.$SERIAL' status.txt && grep -q 'Version:.$FW' status.txt"
    if [ "$FW" = 5.4.3 ]; then
        check "yubico-piv-tool generate 9a ECCP256 (3DES default mgmt key)" \
            yubico-piv-tool -a generate -s 9a -A ECCP256 -o pub9a.pem
        check "certificate for 9a (openssl) + yubico-piv-tool import-certificate" bash -c \
            "openssl ecparam -name prime256v1 -genkey -noout -out ca.key &&
             openssl x509 -new -force_pubkey pub9a.pem -subj /CN=vyk-e2e -key ca.key -days 30 -out cert9a.pem &&
             yubico-piv-tool -a import-certificate -s 9a -i cert9a.pem"
    else
        expect_fail "yubico-piv-tool 2.2.0 generate fails on 5.7 (AES-192 default mgmt key, as on hardware)" \
            yubico-piv-tool -a generate -s 9a -A ECCP256 -o pub9a.pem
        check "ykman piv keys generate 9a ECCP256 (AES-192 mgmt key)" \
            "${YK[@]}" piv keys generate -a ECCP256 -m "$MGM" 9a pub9a.pem
        check "certificate for 9a (openssl) + ykman piv certificates import" bash -c \
            "openssl ecparam -name prime256v1 -genkey -noout -out ca.key &&
             openssl x509 -new -force_pubkey pub9a.pem -subj /CN=vyk-e2e -key ca.key -days 30 -out cert9a.pem &&
             ${YK[*]} piv certificates import -m $MGM 9a cert9a.pem"
    fi
    check "yubico-piv-tool verify-pin + test-signature 9a" bash -c \
        "yubico-piv-tool -a verify-pin -P 123456 -a test-signature -s 9a -i cert9a.pem 2>&1 | tee ts.txt && grep -q 'Successful ECDSA verification' ts.txt"

    # ykman
    check "ykman info (mgmt applet: serial, firmware)" bash -c \
        "${YK[*]} info | tee info.txt && grep -q 'Serial number: $SERIAL' info.txt && grep -q 'Firmware version: $FW' info.txt"
    check "ykman piv info" bash -c "${YK[*]} piv info | tee pivinfo.txt && grep -q 'PIV version: $FW' pivinfo.txt"
    check "ykman piv keys generate 9c ECCP384" "${YK[@]}" piv keys generate -a ECCP384 -m "$MGM" 9c pub9c.pem
    check "ykman piv keys attest 9c + openssl verify chain root -> F9 -> leaf" bash -c \
        "${YK[*]} piv keys attest 9c att9c.pem &&
         yubico-piv-tool -a read-certificate -s f9 > f9.pem &&
         openssl verify -CAfile root.pem -untrusted f9.pem att9c.pem &&
         cmp <(openssl x509 -in att9c.pem -noout -pubkey) <(openssl pkey -pubin -in pub9c.pem)"
    check "attestation extensions carry firmware and serial" bash -c \
        "openssl asn1parse -in att9c.pem > asn1.txt &&
         grep -A1 '1.3.6.1.4.1.41482.3.3' asn1.txt | grep -qi \"$(printf '%02X%02X%02X' ${FW//./ })\" &&
         grep -A1 '1.3.6.1.4.1.41482.3.7' asn1.txt | grep -qi \"$(printf '%08X' "$SERIAL")\""
    check "ykman piv keys generate 9d RSA2048" "${YK[@]}" piv keys generate -a RSA2048 -m "$MGM" 9d pub9d.pem
    check "ykman piv certificates generate 9d (card-signed RSA, chained APDUs)" \
        "${YK[@]}" piv certificates generate -s CN=vyk-rsa -m "$MGM" -P 123456 9d pub9d.pem

    # ykcs11
    check "pkcs11-tool -L (ykcs11)" bash -c \
        "pkcs11-tool --module $YKCS11 -L | tee p11.txt && grep -q 'YubiKey PIV #$SERIAL' p11.txt"
    check "ykcs11 ECDSA sign with 9a, verified by openssl" bash -c \
        "echo 'hello from ci' > data.txt && openssl dgst -sha256 -binary data.txt > data.sha256 &&
         pkcs11-tool --module $YKCS11 --login --pin 123456 --sign --id 01 -m ECDSA -i data.sha256 -o sig9a.der --signature-format openssl &&
         openssl dgst -sha256 -verify pub9a.pem -signature sig9a.der data.txt"
    check "ykcs11 RSA PKCS#1 sign with 9d, verified by openssl" bash -c \
        "pkcs11-tool --module $YKCS11 --login --pin 123456 --sign --id 03 -m SHA256-RSA-PKCS -i data.txt -o sig9d.bin &&
         openssl dgst -sha256 -verify pub9d.pem -signature sig9d.bin data.txt"

    check "touch-policy ALWAYS key in 9e: ykcs11 sign succeeds after the simulated touch" bash -c \
        "${YK[*]} piv keys generate -a ECCP256 --touch-policy ALWAYS -m $MGM 9e pub9e.pem &&
         pkcs11-tool --module $YKCS11 --login --pin 123456 --sign --id 04 -m ECDSA -i data.sha256 -o sig9e.der --signature-format openssl &&
         openssl dgst -sha256 -verify pub9e.pem -signature sig9e.der data.txt &&
         grep -q 'touch required: simulating a touch' vyk.log"

    # persistence: restart only the emulator, keys and certificates must survive
    check "state survives an emulator restart" bash -c \
        "kill -TERM \$(cat vyk.pid) && while kill -0 \$(cat vyk.pid) 2>/dev/null; do sleep 0.1; done &&
         (\"$VYK_BIN\" --version $FW --serial $SERIAL --state state.json --log vyk2.log --log-level debug & echo \$! > vyk.pid) &&
         for i in \$(seq 100); do opensc-tool -l 2>/dev/null | grep -q '^0 *Yes' && break; sleep 0.1; done &&
         yubico-piv-tool -a verify-pin -P 123456 -a test-signature -s 9a -i cert9a.pem"

    # PIN lockout and recovery
    check "wrong PIN three times -> blocked (63C2, 63C1, 6983)" bash -c \
        "for i in 1 2 3; do ! yubico-piv-tool -a verify-pin -P 000000 || exit 1; done;
         ! yubico-piv-tool -a verify-pin -P 123456 &&
         yubico-piv-tool -a status | grep -q 'PIN tries left:.0'"
    check "unblock with PUK, PIN works again" bash -c \
        "yubico-piv-tool -a unblock-pin -P 12345678 -N 123456 && yubico-piv-tool -a verify-pin -P 123456"
    check "ykman piv reset (blocks PIN+PUK, then FB) -> factory state" bash -c \
        "${YK[*]} piv reset -f && ${YK[*]} piv info | tee reset.txt && grep -q 'Using default PIN' reset.txt && ! grep -q 'Slot 9a' reset.txt"

    "$ROOT/scripts/vyk-down.sh" "$W"
}

run_firmware 5.4.3 12345678
run_firmware 5.7.1 30000001

echo "$PASS passed, $FAIL failed"
[ "$FAIL" -eq 0 ]
