// An independent JWE producer for sigild's tests: node `jose` (CompactEncrypt), pinned in
// package.json. Reads one JSON request on stdin, prints one JSON result on stdout, exits 1 on
// a failure:
//   {"op": "encrypt", "jwk": {...public JWK}, "alg": ALG, "enc": ENC, "plaintext_b64": B64URL,
//    "header": {...extra protected members: kid, cty ...}}          -> {"ok": true, "jwe": COMPACT}
//   {"op": "encrypt_batch", "items": [ENCRYPT, ...]}                -> {"ok": true, "jwe": [COMPACT, ...]}
// Only the JWK's public members are used; node jose does the key management (RSA-OAEP, ECDH-ES
// with its Concat KDF and AES key wrap) and the content encryption.
import { CompactEncrypt, importJWK, base64url } from 'jose';

async function encrypt(req) {
  for (const member of ['d', 'p', 'q', 'dp', 'dq', 'qi']) {
    if (member in req.jwk) throw new Error('encrypt takes a public JWK');
  }
  const key = await importJWK(req.jwk, req.alg);
  const protectedHeader = { alg: req.alg, enc: req.enc, ...(req.header ?? {}) };
  const jwe = await new CompactEncrypt(base64url.decode(req.plaintext_b64))
    .setProtectedHeader(protectedHeader)
    .encrypt(key);
  return jwe;
}

async function main() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  const req = JSON.parse(Buffer.concat(chunks).toString('utf8'));
  let out;
  if (req.op === 'encrypt') {
    out = { ok: true, jwe: await encrypt(req) };
  } else if (req.op === 'encrypt_batch') {
    const jwes = [];
    for (const item of req.items) jwes.push(await encrypt(item));
    out = { ok: true, jwe: jwes };
  } else {
    throw new Error(`unknown op ${req.op}`);
  }
  process.stdout.write(JSON.stringify(out) + '\n');
}

main().catch((e) => {
  process.stdout.write(JSON.stringify({ ok: false, error: `${e.name}: ${e.message}` }) + '\n');
  process.exit(1);
});
