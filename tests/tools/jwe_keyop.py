#!/usr/bin/env python3
"""The sender's half of JWE key management, done with Python `cryptography` (code sigild did not
write), for the PKCS#11 decryption tests: what a decryption key's private step must undo.

Reads one JSON request on stdin, prints one JSON result on stdout (bytes as base64url), exits 1
on failure:
  {"op": "oaep", "n": B64, "e": B64, "hash": "sha1" | "sha256"}
      -> {"cek": B64 (32 random bytes), "ciphertext": B64 (RSAES-OAEP, empty label)}
  {"op": "ecdh", "curve": "P-256" | "P-384", "x": B64, "y": B64}
      -> {"x": B64, "y": B64 (a new ephemeral key), "z": B64 (the ECDH shared secret)}
"""
import base64
import json
import os
import sys

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa


def b64d(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def b64e(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def oaep(req):
    n = int.from_bytes(b64d(req["n"]), "big")
    e = int.from_bytes(b64d(req["e"]), "big")
    public = rsa.RSAPublicNumbers(e, n).public_key()
    h = {"sha1": hashes.SHA1, "sha256": hashes.SHA256}[req["hash"]]()
    cek = os.urandom(32)
    ct = public.encrypt(cek, padding.OAEP(mgf=padding.MGF1(h), algorithm=h, label=None))
    return {"cek": b64e(cek), "ciphertext": b64e(ct)}


def ecdh(req):
    curve, size = {"P-256": (ec.SECP256R1(), 32), "P-384": (ec.SECP384R1(), 48)}[req["curve"]]
    x = int.from_bytes(b64d(req["x"]), "big")
    y = int.from_bytes(b64d(req["y"]), "big")
    peer = ec.EllipticCurvePublicNumbers(x, y, curve).public_key()
    eph = ec.generate_private_key(curve)
    z = eph.exchange(ec.ECDH(), peer)
    nums = eph.public_key().public_numbers()
    return {
        "x": b64e(nums.x.to_bytes(size, "big")),
        "y": b64e(nums.y.to_bytes(size, "big")),
        "z": b64e(z),
    }


def main():
    req = json.load(sys.stdin)
    try:
        out = {"oaep": oaep, "ecdh": ecdh}[req["op"]](req)
    except Exception as e:  # reported to the test, which fails
        print(json.dumps({"ok": False, "error": repr(e)}))
        sys.exit(1)
    out["ok"] = True
    print(json.dumps(out))


if __name__ == "__main__":
    main()
