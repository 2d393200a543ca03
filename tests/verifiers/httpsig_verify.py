#!/usr/bin/env python3
"""Independent verifier of RFC 9421 HTTP message signatures for sigild's tests, through PyPI
`http-message-signatures` (pinned in scripts/install-deps.sh) and jwcrypto for the JWK.

Reads one JSON request on stdin, prints one JSON result on stdout, exits 1 on a failed check.
  {"op": "verify", "message": MESSAGE, "jwk": {...}, "alg": ALG, "tag": TAG,
   "require": [COMPONENT, ...], "max_age": SECONDS}
      verify the one signature of MESSAGE whose `tag` is TAG with the public JWK; ALG is the
      RFC 9421 algorithm (ecdsa-p256-sha256, ed25519, rsa-pss-sha512); every COMPONENT
      (e.g. "@method", '"signature";req;key="sig"') must be covered; a body in MESSAGE must
      match a covered Content-Digest.
      -> {"ok": true, "label": L, "covered": {COMPONENT: VALUE, ...}, "params": {...},
          "body_verified": BOOL, "base": THE_SIGNATURE_BASE_IT_VERIFIED}
  {"op": "batch", "items": [VERIFY, ...]}
      many at once: {"ok": true, "results": [{"ok": true, ...} | {"ok": false, "error": E}]}
  {"op": "base", "message": MESSAGE, "components": [COMPONENT, ...], "params": {...}}
      the library's own signature base (RFC 9421 §2.5) for the covered components and
      signature parameters: {"ok": true, "base": TEXT, "params": SIGNATURE_PARAMS}

MESSAGE is a request {"method": M, "url": U, "headers": [[NAME, VALUE], ...], "body_b64": B}
or a response {"status": S, "headers": [...], "body_b64": B, "request": REQUEST}; body_b64
(base64url) is optional, field lines keep their order and repetitions.
"""
import base64
import datetime
import json
import sys

from http_message_signatures import HTTPMessageSigner, HTTPMessageVerifier, algorithms
from http_message_signatures._components import _parse_component_ids
from http_message_signatures.resolvers import HTTPSignatureKeyResolver
from jwcrypto import jwk

ALGS = {
    "ecdsa-p256-sha256": algorithms.ECDSA_P256_SHA256,
    "ed25519": algorithms.ED25519,
    "rsa-pss-sha512": algorithms.RSA_PSS_SHA512,
}


def b64d(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


class Headers:
    """Field lines in wire order, repetitions kept (what the library's `items()` reads)."""

    def __init__(self, lines):
        self.lines = [(str(n), str(v)) for n, v in lines]

    def items(self):
        return list(self.lines)

    def __iter__(self):
        return iter([n for n, _ in self.lines])

    def __contains__(self, name):
        return any(n.lower() == name.lower() for n, _ in self.lines)

    def __getitem__(self, name):
        values = [v for n, v in self.lines if n.lower() == name.lower()]
        if not values:
            raise KeyError(name)
        return ", ".join(values)

    def __setitem__(self, name, value):
        self.lines = [(n, v) for n, v in self.lines if n.lower() != name.lower()]
        self.lines.append((name, value))

    def __delitem__(self, name):
        self.lines = [(n, v) for n, v in self.lines if n.lower() != name.lower()]


class Request:
    def __init__(self, m):
        self.method = m["method"]
        self.url = m["url"]
        self.headers = Headers(m.get("headers", []))


class Response:
    def __init__(self, m):
        self.status_code = int(m["status"])
        self.headers = Headers(m.get("headers", []))
        self.request = Request(m["request"]) if m.get("request") else None


def message(m):
    return Response(m) if "status" in m else Request(m)


class OneKey(HTTPSignatureKeyResolver):
    """The one public key the test gives; any keyid resolves to it (the test checks keyid)."""

    def __init__(self, key):
        self.key = key

    def resolve_public_key(self, key_id):
        return self.key

    def resolve_private_key(self, key_id):
        raise KeyError("verification only")


def verify(req):
    key = jwk.JWK(**req["jwk"]).get_op_key("verify")
    verifier = HTTPMessageVerifier(signature_algorithm=ALGS[req["alg"]], key_resolver=OneKey(key))
    m = req["message"]
    body = b64d(m["body_b64"]) if "body_b64" in m else None
    max_age = req.get("max_age", 300)
    results = verifier.verify(
        message(m),
        expect_tag=req["tag"],
        require_components=req.get("require", []),
        max_age=datetime.timedelta(seconds=max_age),
        body=body,
    )
    if len(results) != 1:
        raise ValueError(f"{len(results)} signatures with tag {req['tag']}")
    r = results[0]
    return {
        "ok": True,
        "label": r.label,
        "covered": dict(r.covered_components),
        "params": {k: v for k, v in r.parameters.items()},
        "body_verified": r.body is not None,
        "base": "\n".join(f"{k}: {v}" for k, v in r.covered_components.items()),
    }


def base(req):
    signer = HTTPMessageSigner(signature_algorithm=algorithms.ED25519)
    params = dict(req.get("params", {}))
    m = message(req["message"])
    # The library's own parsing of component names and its own base construction, exactly as
    # its verify() resolves them.
    covered = _parse_component_ids(tuple(req["components"]))
    text, node, _ = signer._build_signature_base(m, covered_component_ids=covered, signature_params=params)
    return {"ok": True, "base": text, "params": str(node)}


def run(req):
    op = req["op"]
    if op == "verify":
        return verify(req)
    if op == "base":
        return base(req)
    if op == "batch":
        results = []
        for item in req["items"]:
            try:
                results.append(verify(item))
            except Exception as e:  # noqa: BLE001 - every failure is reported by index
                results.append({"ok": False, "error": f"{type(e).__name__}: {e}"})
        return {"ok": True, "results": results}
    raise ValueError("unknown op " + op)


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
