#!/usr/bin/env python3
"""Make a key pair on a PKCS#11 token with PyKCS11, as another tool would, for sigild's adoption
tests. Unlike pkcs11-tool, it can ask for a private key that never leaves the token
(CKA_SENSITIVE=true, CKA_EXTRACTABLE=false), which some tokens (openCryptoki's soft token) do not
make by default.

Reads one JSON request on stdin, prints one JSON result on stdout, exits 1 on failure:
  {"module": PATH, "token": LABEL, "pin": PIN, "kind": "rsa" | "ec-p256", "bits": 2048,
   "label": LABEL, "id": HEX, "extractable": false}
"""
import json
import sys

import PyKCS11

P256_OID_DER = bytes.fromhex("06082a8648ce3d030107")


def main():
    req = json.load(sys.stdin)
    lib = PyKCS11.PyKCS11Lib()
    lib.load(req["module"])
    slot = next(
        s for s in lib.getSlotList(tokenPresent=True) if lib.getTokenInfo(s).label.strip() == req["token"]
    )
    session = lib.openSession(slot, PyKCS11.CKF_SERIAL_SESSION | PyKCS11.CKF_RW_SESSION)
    session.login(req["pin"])
    key_id = bytes.fromhex(req["id"])
    common = [
        (PyKCS11.CKA_TOKEN, PyKCS11.CK_TRUE),
        (PyKCS11.CKA_LABEL, req["label"]),
        (PyKCS11.CKA_ID, key_id),
    ]
    public = common + [(PyKCS11.CKA_VERIFY, PyKCS11.CK_TRUE)]
    private = common + [
        (PyKCS11.CKA_PRIVATE, PyKCS11.CK_TRUE),
        (PyKCS11.CKA_SIGN, PyKCS11.CK_TRUE),
        (PyKCS11.CKA_SENSITIVE, PyKCS11.CK_TRUE),
        (PyKCS11.CKA_EXTRACTABLE, PyKCS11.CK_TRUE if req.get("extractable") else PyKCS11.CK_FALSE),
    ]
    if req["kind"] == "rsa":
        public += [
            (PyKCS11.CKA_MODULUS_BITS, req.get("bits", 2048)),
            (PyKCS11.CKA_PUBLIC_EXPONENT, (0x01, 0x00, 0x01)),
        ]
        mechanism = PyKCS11.Mechanism(PyKCS11.CKM_RSA_PKCS_KEY_PAIR_GEN, None)
    elif req["kind"] == "ec-p256":
        public += [(PyKCS11.CKA_EC_PARAMS, P256_OID_DER)]
        mechanism = PyKCS11.Mechanism(PyKCS11.CKM_EC_KEY_PAIR_GEN, None)
    else:
        raise ValueError("unknown kind " + req["kind"])
    session.generateKeyPair(public, private, mechanism)
    session.logout()
    session.closeSession()
    print(json.dumps({"ok": True}))


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # noqa: BLE001 - report every failure
        print(json.dumps({"ok": False, "error": f"{type(e).__name__}: {e}"}))
        sys.exit(1)
