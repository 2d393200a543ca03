#!/usr/bin/env python3
"""Make the inputs of a device's decryption step from its public key with Python `cryptography`
(code sigild did not write), and the result the device must reach, for the backend tests of
decryption keys.

Reads one JSON request on stdin, prints one JSON result on stdout (hex strings), exits 1 on
failure:
  {"op": "rsa-oaep", "hash": "sha1" | "sha256", "n": HEX, "e": HEX}
      -> {"ok": true, "ciphertext": HEX, "cek": HEX}   (a random 32-byte CEK, OAEP-encrypted)
  {"op": "ecdh", "curve": "P-256" | "P-384", "x": HEX, "y": HEX}
      -> {"ok": true, "epk_x": HEX, "epk_y": HEX, "z": HEX}   (a fresh ephemeral key; Z = x of
         the shared point, field-length)
"""
import json
import os
import sys

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

CURVES = {"P-256": (ec.SECP256R1(), 32), "P-384": (ec.SECP384R1(), 48)}
HASHES = {"sha1": hashes.SHA1, "sha256": hashes.SHA256}


def main():
    req = json.load(sys.stdin)
    if req["op"] == "rsa-oaep":
        public = rsa.RSAPublicNumbers(int(req["e"], 16), int(req["n"], 16)).public_key()
        h = HASHES[req["hash"]]
        cek = os.urandom(32)
        ct = public.encrypt(cek, padding.OAEP(mgf=padding.MGF1(algorithm=h()), algorithm=h(), label=None))
        out = {"ok": True, "ciphertext": ct.hex(), "cek": cek.hex()}
    elif req["op"] == "ecdh":
        curve, size = CURVES[req["curve"]]
        peer = ec.EllipticCurvePublicNumbers(int(req["x"], 16), int(req["y"], 16), curve).public_key()
        eph = ec.generate_private_key(curve)
        z = eph.exchange(ec.ECDH(), peer)
        nums = eph.public_key().public_numbers()
        out = {
            "ok": True,
            "epk_x": nums.x.to_bytes(size, "big").hex(),
            "epk_y": nums.y.to_bytes(size, "big").hex(),
            "z": z.hex(),
        }
    else:
        raise ValueError(f"unknown op {req['op']!r}")
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # noqa: BLE001 - reported to the test as JSON
        json.dump({"ok": False, "error": f"{type(e).__name__}: {e}"}, sys.stdout)
        sys.exit(1)
