#!/usr/bin/env python3
"""Writes jwcrypto.json beside this file: compact JWEs made by python jwcrypto (not by sigild)
for every alg x enc sigild decrypts, with the throw-away private keys the unit tests in tests.rs
use to play the device's part. Rerun only to change the set: the JSON is committed.

    python3 src/jose/jwe/open/make_fixtures.py
"""
import base64
import json
import os

from jwcrypto import jwe, jwk

ALGS_RSA = ["RSA-OAEP", "RSA-OAEP-256"]
ALGS_EC = ["ECDH-ES", "ECDH-ES+A128KW", "ECDH-ES+A256KW"]
ENCS = ["A128GCM", "A256GCM", "A128CBC-HS256", "A256CBC-HS512"]


def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


keys = {
    "rsa2048": jwk.JWK.generate(kty="RSA", size=2048),
    "p256": jwk.JWK.generate(kty="EC", crv="P-256"),
    "p384": jwk.JWK.generate(kty="EC", crv="P-384"),
}
cases = []
n = 0
for key_name, algs in [("rsa2048", ALGS_RSA), ("p256", ALGS_EC), ("p384", ALGS_EC)]:
    key = keys[key_name]
    for alg in algs:
        for enc in ENCS:
            n += 1
            # Lengths around the AES block size, an empty one for GCM, some non-ASCII bytes.
            plaintext = os.urandom([0, 1, 15, 16, 17, 31, 64, 100][n % 8])
            if plaintext == b"" and "CBC" in enc:
                plaintext = b"x"
            header = {"alg": alg, "enc": enc, "kid": key.thumbprint()}
            if alg.startswith("ECDH") and n % 2 == 0:
                header["apu"] = b64(b"Alice")
                header["apv"] = b64(os.urandom(32))
            token = jwe.JWE(plaintext, json.dumps(header))
            token.add_recipient(key.public())
            cases.append({
                "key": key_name,
                "alg": alg,
                "enc": enc,
                "jwe": token.serialize(compact=True),
                "plaintext": b64(plaintext),
            })

out = {
    "made_by": "jwcrypto (make_fixtures.py)",
    "keys": {name: json.loads(k.export_private()) for name, k in keys.items()},
    "cases": cases,
}
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "jwcrypto.json"), "w") as f:
    json.dump(out, f, indent=1)
    f.write("\n")
