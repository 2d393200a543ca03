#!/usr/bin/env python3
"""Independent verifier for sigild's tests: JOSE via jwcrypto, raw signatures via cryptography.

Reads one JSON request on stdin, prints one JSON result on stdout, exits 1 on a failed check.
  {"op": "jws", "jws": COMPACT, "jwks": {...}}        verify with the key whose kid matches
  {"op": "jws", "jws": COMPACT, "header_jwk": true}   verify with the header's own jwk (DPoP)
  {"op": "raw", "alg": ALG, "jwk": {...}, "data_b64": B64URL, "sig_b64": B64URL}
  {"op": "thumbprint", "jwk": {...}}
  {"op": "spki_thumbprint", "der_b64": B64URL}        RFC 7638 thumbprint of a DER or PEM
  {"op": "spki_thumbprint", "pem": PEM}               public key read by a device's own tool
  {"op": "half_hash", "hash": "sha256", "value": S}   OIDC at_hash / c_hash of S
  {"op": "x5t_s256", "pem": PEM}                      RFC 8705 cnf x5t#S256 of a certificate
  {"op": "pkcs8", "jwk": {...}}                       private JWK -> PKCS#8 PEM and DER (test vectors)
  {"op": "jws_batch", "jws": [{"jws": COMPACT, "kid": KID}, ...], "jwks": {...}}
                                                      many at once (kid: the header's, else the
                                                      one given): {"verified": N, "failed": [...]}
  {"op": "encrypt", "jwk": {...}, "alg": ALG, "enc": ENC, "plaintext_b64": B64URL,
   "header": {...}}                                   a compact JWE to the public JWK, made by
                                                      jwcrypto: {"jwe": COMPACT}; "header" holds
                                                      extra protected members (kid, cty, zip,
                                                      crit ...), which jwcrypto applies as it
                                                      does (zip DEF compresses); any alg jwcrypto
                                                      has is allowed, RSA1_5 included
  {"op": "encrypt_batch", "items": [ENCRYPT, ...]}    many at once: {"jwe": [COMPACT, ...]}
  {"op": "batch", "requests": [REQUEST, ...]}         any requests above in one process:
                                                      {"results": [ANSWER, ...]}, or the first
                                                      failure with its index
"""
import base64
import hashlib
import json
import sys

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, utils
from jwcrypto import jwe, jwk, jws


def b64d(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


HASHES = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}


def verify_raw(req):
    key = jwk.JWK(**req["jwk"]).get_op_key("verify")
    alg, data, sig = req["alg"], b64d(req["data_b64"]), b64d(req["sig_b64"])
    if alg.startswith("ES"):
        n = len(sig) // 2
        der = utils.encode_dss_signature(int.from_bytes(sig[:n], "big"), int.from_bytes(sig[n:], "big"))
        key.verify(der, data, ec.ECDSA(HASHES[alg[2:]]()))
    elif alg.startswith("PS"):
        h = HASHES[alg[2:]]()
        key.verify(sig, data, padding.PSS(mgf=padding.MGF1(h), salt_length=h.digest_size), h)
    elif alg.startswith("RS"):
        key.verify(sig, data, padding.PKCS1v15(), HASHES[alg[2:]]())
    elif alg in ("EdDSA", "Ed25519"):
        assert isinstance(key, ed25519.Ed25519PublicKey)
        key.verify(sig, data)
    else:
        raise ValueError("unknown alg " + alg)
    return {"ok": True}


def verify_jws(req):
    token = jws.JWS()
    token.deserialize(req["jws"])
    header = token.jose_header
    if req.get("header_jwk"):
        key = jwk.JWK(**header["jwk"])
    else:
        keys = jwk.JWKSet.from_json(json.dumps(req["jwks"]))
        key = keys.get_key(header["kid"]) if "kid" in header else list(keys)[0]
        if key is None:
            raise ValueError("no key with kid " + header.get("kid", ""))
    token.allowed_algs = [header["alg"]]
    token.verify(key)
    payload = token.payload
    try:
        payload = json.loads(payload)
    except ValueError:
        payload = base64.urlsafe_b64encode(payload).decode().rstrip("=")
    return {"ok": True, "header": header, "payload": payload, "thumbprint": key.thumbprint()}


def to_pkcs8(key):
    """Private JWK -> PKCS#8 PEM; an RSA JWK with only n, e, d gets its CRT parameters
    recovered (RFC 7515 A.2 prints them, but n/e/d are what the vector depends on)."""
    if key.get("kty") == "RSA" and "p" not in key:
        n, e, d = (int.from_bytes(b64d(key[k]), "big") for k in ("n", "e", "d"))
        p, q = rsa.rsa_recover_prime_factors(n, e, d)
        priv = rsa.RSAPrivateNumbers(
            p, q, d, rsa.rsa_crt_dmp1(d, p), rsa.rsa_crt_dmq1(d, q), rsa.rsa_crt_iqmp(p, q),
            rsa.RSAPublicNumbers(e, n),
        ).private_key()
        return priv.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    return jwk.JWK(**key).export_to_pem(private_key=True, password=None)


def spki_thumbprint(req):
    if "pem" in req:
        key = serialization.load_pem_public_key(req["pem"].encode())
    else:
        key = serialization.load_der_public_key(b64d(req["der_b64"]))
    pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return {"ok": True, "thumbprint": jwk.JWK.from_pem(pem).thumbprint()}


def half_hash(req):
    """OIDC Core 3.1.3.6: base64url of the left half of the hash of the ASCII value."""
    digest = hashlib.new(req["hash"], req["value"].encode("ascii")).digest()
    return {"ok": True, "half_hash": base64.urlsafe_b64encode(digest[: len(digest) // 2]).decode().rstrip("=")}


def x5t_s256(req):
    """RFC 8705 3.1: base64url SHA-256 of the certificate's DER, read by cryptography."""
    cert = x509.load_pem_x509_certificate(req["pem"].encode())
    digest = cert.fingerprint(hashes.SHA256())
    return {"ok": True, "x5t_s256": base64.urlsafe_b64encode(digest).decode().rstrip("=")}


def verify_jws_batch(req):
    """Verify many compact JWS against one JWKS in one process (tests that collect thousands)."""
    keys = jwk.JWKSet.from_json(json.dumps(req["jwks"]))
    verified, failed = 0, []
    for i, item in enumerate(req["jws"]):
        try:
            token = jws.JWS()
            token.deserialize(item["jws"])
            header = token.jose_header
            kid = header.get("kid", item.get("kid"))
            key = keys.get_key(kid) if kid else None
            if key is None:
                raise ValueError(f"no key with kid {kid}")
            token.allowed_algs = [header["alg"]]
            token.verify(key)
            verified += 1
        except Exception as e:  # noqa: BLE001 - every failure is reported by index
            failed.append({"index": i, "error": f"{type(e).__name__}: {e}"})
    out = {"ok": not failed, "verified": verified, "failed": failed}
    if failed:
        out["error"] = f"{len(failed)} of {len(req['jws'])} failed, first: {failed[:3]}"
    return out


def encrypt(req):
    """A compact JWE made by jwcrypto to a public JWK (sigild's tests decrypt it through the
    daemon). Only the public members of the JWK are used."""
    key = jwk.JWK(**req["jwk"])
    if key.has_private:
        raise ValueError("encrypt takes a public JWK")
    protected = {"alg": req["alg"], "enc": req["enc"]}
    protected.update(req.get("header") or {})
    algs = list(jwe.default_allowed_algs) + [req["alg"], req["enc"]]
    token = jwe.JWE(b64d(req["plaintext_b64"]), protected=json.dumps(protected), algs=algs)
    token.add_recipient(key)
    return {"ok": True, "jwe": token.serialize(compact=True)}


def run(req):
    """One request: its answer, or an exception for a failed check."""
    op = req["op"]
    if op == "jws":
        return verify_jws(req)
    if op == "jws_batch":
        return verify_jws_batch(req)
    if op == "encrypt":
        return encrypt(req)
    if op == "encrypt_batch":
        return {"ok": True, "jwe": [encrypt(item)["jwe"] for item in req["items"]]}
    if op == "raw":
        return verify_raw(req)
    if op == "thumbprint":
        return {"ok": True, "thumbprint": jwk.JWK(**req["jwk"]).thumbprint()}
    if op == "spki_thumbprint":
        return spki_thumbprint(req)
    if op == "half_hash":
        return half_hash(req)
    if op == "x5t_s256":
        return x5t_s256(req)
    if op == "pkcs8":
        pem = to_pkcs8(req["jwk"])
        der = serialization.load_pem_private_key(pem, password=None).private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return {"ok": True, "pem": pem.decode(), "der_b64": base64.urlsafe_b64encode(der).decode().rstrip("=")}
    if op == "batch":
        return batch(req)
    raise ValueError("unknown op " + op)


def batch(req):
    """Many requests of any op in one process (a Python start costs more than a check):
    {"results": [ANSWER, ...]} in order, or the first failure with its index."""
    results = []
    for i, item in enumerate(req["requests"]):
        try:
            out = run(item)
        except Exception as e:  # noqa: BLE001 - reported with the request's index
            raise ValueError(f"request {i} ({item.get('op')}): {type(e).__name__}: {e}") from e
        if not out.get("ok"):
            raise ValueError(f"request {i} ({item.get('op')}): {out.get('error')}")
        results.append(out)
    return {"ok": True, "results": results}


def main():
    req = json.load(sys.stdin)
    try:
        out = run(req)
    except Exception as e:  # noqa: BLE001 - report every failure as a failed check
        print(json.dumps({"ok": False, "error": f"{type(e).__name__}: {e}"}))
        sys.exit(1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
