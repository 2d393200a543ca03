// node-oidc-provider on sigild, end to end (node --test): a throw-away `sigild dev`, the FAPI
// 2.0 demo OP whose ID tokens sigild signs (its key client over the Unix socket), and the demo
// relying party whose JAR, client-assertion and DPoP keys are on sigild (over mutual TLS). Each
// flow is a whole login (PAR + JAR + private_key_jwt → /auth → login → consent → /token with
// DPoP and nonce → userinfo with DPoP), its ID token verified with node jose against the JWKS the
// OP publishes at that moment.
//
// The rotation test runs FLOWS logins, CONCURRENCY at a time, and rotates the OP key through the
// CLI in the middle: `sigild key rotate` (the new version is published, not yet signing), then
// `sigild key activate`. Zero flows may fail and every token must verify. Headers built just
// before the activation still name the old kid; sigild signs them with the old version within
// its grace period. The figures go to the test's diagnostics (`node --test` prints them).
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { after, before, test } from 'node:test';
import { promisify } from 'node:util';

import {
  compactVerify, createLocalJWKSet, decodeProtectedHeader, jwtVerify,
} from 'jose';

import { SigildClient, SigildKeySet, SigildSigningKey } from '../lib/index.mjs';
import { startOp } from '../demo/op.mjs';
import { clientMetadata, RelyingParty } from '../demo/rp.mjs';
import { startDevDaemon } from './support.mjs';

const FLOWS = Number(process.env.OIDC_FLOWS ?? 200);
const CONCURRENCY = Number(process.env.OIDC_CONCURRENCY ?? 8);
const OP_KEY = 'op-idtoken';
// The relying party's keys: ES256, the cheapest of FAPI 2.0's algorithms on SoftHSM (PS256 and
// EdDSA cost several times more per signature, and a flow makes six of them)
const RP_KEY = 'rp-jar';
const DPOP_KEY = 'rp-dpop';

let daemon;
let opClient;
let rpClient;
let keySet;
let op;
let rp;

async function cli(...args) {
  const { stdout } = await promisify(execFile)(daemon.bin, args, { env: daemon.cliEnv });
  return stdout;
}

before(async () => {
  daemon = await startDevDaemon();
  opClient = new SigildClient({ endpoint: daemon.socket });
  rpClient = new SigildClient({
    endpoint: daemon.https, ca: daemon.ca, cert: daemon.cert, key: daemon.key,
  });
  for (const name of [OP_KEY, RP_KEY, DPOP_KEY]) await cli('key', 'create', name, '--alg', 'ES256');
  // without WatchKeys (an older daemon) the key set is polled: often, so that the test still
  // sees the activation quickly
  keySet = await new SigildKeySet(opClient, [OP_KEY], { pollSeconds: 0.5 }).start();
  const metadata = await clientMetadata(rpClient, {
    clientId: 'test-rp', redirectUri: 'https://rp.test/cb', signingKey: RP_KEY, idTokenAlg: 'ES256',
  });
  op = await startOp({ client: opClient, keySet, clients: [metadata] });
  rp = new RelyingParty(rpClient, {
    issuer: op.issuer,
    clientId: 'test-rp',
    redirectUri: 'https://rp.test/cb',
    signingKey: RP_KEY,
    dpopKey: DPOP_KEY,
    idTokenAlg: 'ES256',
  });
});

after(async () => {
  keySet?.close();
  opClient?.close();
  rpClient?.close();
  op?.server.close();
  await daemon?.stop();
});

async function opJwks() {
  const r = await fetch(new URL('/jwks', op.issuer));
  assert.equal(r.status, 200);
  return r.json();
}

async function until(what, condition, ms = 10_000) {
  const end = Date.now() + ms;
  while (!condition()) {
    if (Date.now() > end) throw new Error(`${what}: not within ${ms} ms`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

test('SigildSigningKey sends node-oidc-provider\'s signing input to SignJws byte for byte', async () => {
  const key = new SigildSigningKey(opClient, keySet, OP_KEY);
  const { kid, alg } = keySet.active(OP_KEY);
  assert.equal(key.kid, kid);
  assert.equal(key.alg, 'ES256');
  assert.equal(key.kty, 'EC');
  assert.equal(key.crv, 'P-256');
  assert.equal(key.keyObject().asymmetricKeyType, 'ec');
  // a header with odd spacing and a non-ASCII member, as no serializer of sigild's would write it
  const header = Buffer.from(`{ "alg":"${alg}",  "kid":"${kid}", "x-note":"été" }`);
  const payload = Buffer.from('{"sub":"byte-for-byte","n":1.50}');
  const input = `${header.toString('base64url')}.${payload.toString('base64url')}`;
  const signature = await key.sign(Buffer.from(input));
  const jws = `${input}.${signature.toString('base64url')}`;
  const verified = await compactVerify(jws, createLocalJWKSet(keySet.jwks));
  assert.deepEqual(Buffer.from(verified.payload), payload);
  assert.equal(verified.protectedHeader['x-note'], 'été');
  // a kid that is none of the key's versions: sigild refuses, nothing is signed
  const wrong = Buffer.from(`{"alg":"${alg}","kid":"not-a-version"}`).toString('base64url');
  await assert.rejects(key.sign(Buffer.from(`${wrong}.${payload.toString('base64url')}`)), (e) => {
    assert.ok(e.code !== undefined, `a gRPC status, got ${e.message}`);
    return true;
  });
});

test('a FAPI 2.0 login: ID token signed by sigild with the active kid, verified by jose', async () => {
  const { kid, version } = keySet.active(OP_KEY);
  const result = await rp.login('alice');
  assert.equal(result.header.alg, 'ES256');
  assert.equal(result.header.kid, kid);
  assert.equal(result.claims.iss, op.issuer);
  assert.equal(result.userinfo.sub, 'alice');
  // the OP publishes sigild's JWKS of its key
  const jwks = await opJwks();
  assert.deepEqual(jwks.keys.map((k) => k.kid), [kid]);
  // and sigild's audit trail names the version that signed
  assert.ok(version >= 1);
});

test(`${FLOWS} logins with the OP key rotated and activated in the middle: no failure`, async (t) => {
  const before = keySet.active(OP_KEY);
  const tokens = [];
  const failures = [];
  let done = 0;
  let next = 0;
  let rotatedAt;
  let activatedAt;
  let newKid;
  let afterActivation = 0; // flows started after the activation returned
  let graceSigned = 0; // of those, tokens still under the old kid (signed within the grace)
  const started = Date.now();

  const rotation = (async () => {
    await until('a third of the flows', () => done >= FLOWS / 3, 120_000);
    await cli('key', 'rotate', OP_KEY);
    rotatedAt = done;
    // the new version is published before it signs: the OP's JWKS shows it
    await until('the rotated version in the key set', () => keySet.key(OP_KEY).versions.length === 2);
    newKid = keySet.key(OP_KEY).versions.find((v) => v.version !== before.version).kid;
    const published = await opJwks();
    assert.ok(published.keys.some((k) => k.kid === newKid), 'the next version is published');
    await until('two thirds of the flows', () => done >= (2 * FLOWS) / 3, 120_000);
    await cli('key', 'activate', OP_KEY);
    activatedAt = done;
  })();

  async function worker(w) {
    while (next < FLOWS) {
      const i = next;
      next += 1;
      const startedAfterActivation = activatedAt !== undefined;
      try {
        const result = await rp.login(`user-${w}-${i}`);
        tokens.push(result.idToken);
        if (startedAfterActivation) {
          afterActivation += 1;
          if (result.header.kid === before.kid) graceSigned += 1;
        }
      } catch (e) {
        failures.push(`flow ${i}: ${e.message}`);
      }
      done += 1;
    }
  }
  await Promise.all([rotation, ...Array.from({ length: CONCURRENCY }, (_, w) => worker(w))]);
  const seconds = (Date.now() - started) / 1000;

  assert.deepEqual(failures, []);
  assert.equal(tokens.length, FLOWS);
  // the new version signs once the OP saw the activation
  await until('the activation in the key set', () => keySet.active(OP_KEY).kid === newKid);
  const last = await rp.login('after-rotation');
  assert.equal(last.header.kid, newKid);
  // every token verifies against what the OP publishes now (the old version stays, retired)
  const jwks = createLocalJWKSet(await opJwks());
  const kids = new Map();
  for (const token of [...tokens, last.idToken]) {
    await jwtVerify(token, jwks, { issuer: op.issuer, audience: 'test-rp', algorithms: ['ES256'] });
    const { kid } = decodeProtectedHeader(token);
    kids.set(kid, (kids.get(kid) ?? 0) + 1);
  }
  assert.deepEqual([...kids.keys()].sort(), [before.kid, newKid].sort());
  // what an OP that has not seen the activation yet does, on purpose: a header naming the old
  // kid is still signed (by the old version, within its grace period) and verifies
  const key = new SigildSigningKey(opClient, keySet, OP_KEY);
  const header = Buffer.from(JSON.stringify({ alg: 'ES256', kid: before.kid })).toString('base64url');
  const input = `${header}.${Buffer.from('{"sub":"late"}').toString('base64url')}`;
  const late = `${input}.${(await key.sign(Buffer.from(input))).toString('base64url')}`;
  const { protectedHeader } = await compactVerify(late, jwks);
  assert.equal(protectedHeader.kid, before.kid);
  t.diagnostic(`${FLOWS} flows (+1), concurrency ${CONCURRENCY}, ${seconds.toFixed(1)} s (${(FLOWS / seconds).toFixed(1)} flows/s), 0 failed`);
  t.diagnostic(`key set followed by ${keySet.mode === 'watch' ? 'WatchKeys' : 'polling ListKeys'}; rotate after flow ${rotatedAt}, activate after flow ${activatedAt}`);
  t.diagnostic(`tokens: ${kids.get(before.kid)} under the old kid, ${kids.get(newKid)} under the new; ${graceSigned} of ${afterActivation} flows started after the activation still got the old kid (grace)`);
});
