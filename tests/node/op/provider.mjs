// A real OpenID Provider (node-oidc-provider) for sigild's end-to-end tests: it issues ID tokens
// and JARM responses encrypted to clients whose `jwks` hold sigild's decryption keys.
//
//   node provider.mjs CLIENTS.json [JARM.json]
//
// CLIENTS.json is an array of client metadata (client_id, client_secret, redirect_uris, jwks,
// id_token_encrypted_response_alg/enc, authorization_encrypted_response_alg/enc, ...). The OP
// listens on 127.0.0.1 on a port the kernel picks, then prints one JSON line on stdout:
// {"issuer":"http://127.0.0.1:PORT"}. It runs until killed or until its stdin closes (so it
// dies with the test that started it, however that ends); its own log goes to stderr.
//
// The OP's signing key (ES256, for ID tokens and JARM responses) is generated at start and
// published at /jwks.
//
// With JARM.json, JARM responses (response_mode=jwt, query.jwt, ...) are signed by sigild through
// its JARM profile instead: `sigild sign jarm` with the issuer, the client_id and the response
// parameters (sigild sets iss, aud, exp and iat itself), the sigild key chosen by the client's
// authorization_signed_response_alg. JARM.json is {"sigild": PATH of the sigild binary, "keys":
// {ALG: sigild key name, ...}, "jwks": {"keys": [the public JWKs of those keys]}}; the CLI finds
// the daemon through this process's SIGILD_ENDPOINT, SIGILD_CA, SIGILD_CERT and SIGILD_KEY. The
// OP holds those public keys as external signing keys (after its own ES256 key), so it
// publishes them at /jwks next to its own and accepts their algs. Clients that ask for
// encrypted JARM responses get sigild's JWS encrypted to their public key by the OP.
//
// Logins go through the OP's development interactions (see login.mjs).
import { execFile } from 'node:child_process';
import { createPublicKey } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';

import { CompactEncrypt, exportJWK, generateKeyPair } from 'jose';
import Provider, { ExternalSigningKey } from 'oidc-provider';

// stdout carries the one issuer line; the OP's notices (console.info) go to stderr with the rest.
console.info = console.error;

const [clientsFile, jarmFile] = process.argv.slice(2);
if (!clientsFile) {
  console.error('usage: node provider.mjs CLIENTS.json [JARM.json]');
  process.exit(2);
}
const clients = JSON.parse(readFileSync(clientsFile, 'utf8'));
const jarm = jarmFile ? JSON.parse(readFileSync(jarmFile, 'utf8')) : undefined;

// `sigild sign jarm`: the compact JWS it prints. The response parameters (the code among them)
// go through stdin, never the command line.
function sigildSignJarm(key, clientId, response) {
  return new Promise((resolve, reject) => {
    const args = ['sign', 'jarm', '--key', key, '--issuer', issuer, '--client-id', clientId,
      '--response-file', '-'];
    const child = execFile(jarm.sigild, args, (err, stdout, stderr) => {
      if (err) reject(new Error(`sigild sign jarm (${key}): ${stderr.trim() || err.message}`));
      else resolve(stdout.trim());
    });
    child.stdin.end(JSON.stringify(response));
  });
}

// A sigild JARM key in the OP's keystore: its public key, so that the OP publishes it at /jwks
// and accepts clients registering its alg. The OP never signs with it itself (sign refuses):
// its responses reach sigild through the JARM profile below, whole.
class SigildJarmKey extends ExternalSigningKey {
  #jwk;

  constructor(jwk) {
    super();
    this.#jwk = jwk;
    this.kid = jwk.kid;
    this.alg = jwk.alg;
  }

  keyObject() {
    return createPublicKey({ key: this.#jwk, format: 'jwk' });
  }

  async sign() {
    throw new Error('a sigild JARM key signs only through sigild sign jarm');
  }
}

// The provider whose JARM responses sigild signs: its ID token model (which issues JARM
// responses with use "authorization") hands those to sigild and everything else to the OP's own
// keys. A module variable, not a private field: the base constructor may ask for the model
// before a subclass's fields exist.
let SigildIdToken;
class SigildJarmProvider extends Provider {
  get IdToken() {
    if (!SigildIdToken) {
      const Base = super.IdToken;
      SigildIdToken = class extends Base {
        async issue(options) {
          if (options?.use !== 'authorization') return super.issue(options);
          const { client } = this;
          const alg = client.authorizationSignedResponseAlg;
          const key = jarm.keys[alg];
          if (!key) throw new Error(`${client.clientId}: no sigild JARM key for ${alg}`);
          const signed = await sigildSignJarm(key, client.clientId, this.extra);
          const enc = client.authorizationEncryptedResponseEnc;
          if (!enc) return signed;
          // Encrypted to the client's public key as the OP encrypts its own (a nested JWT);
          // only to asymmetric keys, which is all these tests register.
          const encAlg = client.authorizationEncryptedResponseAlg;
          if (/^(A|dir$)/.test(encAlg)) {
            throw new Error(`${client.clientId}: ${encAlg}: only public-key encryption here`);
          }
          await client.asymmetricKeyStore.refresh();
          const [jwk] = client.asymmetricKeyStore.selectForEncrypt({ alg: encAlg, use: 'enc' });
          if (!jwk) throw new Error(`${client.clientId}: no key to encrypt to (${encAlg})`);
          return new CompactEncrypt(Buffer.from(signed))
            .setProtectedHeader({ alg: encAlg, enc, cty: 'JWT', kid: jwk.kid })
            .encrypt(client.asymmetricKeyStore.getKeyObject(jwk, true));
        }
      };
      // the model's name selects its ttl configuration
      Object.defineProperty(SigildIdToken, 'name', { value: Base.name });
    }
    return SigildIdToken;
  }
}

async function signingJwk(alg) {
  const { privateKey } = await generateKeyPair(alg, { extractable: true });
  return { ...(await exportJWK(privateKey)), alg, use: 'sig', kid: `op-${alg}` };
}

const server = createServer();
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(0, '127.0.0.1', resolve);
});
const issuer = `http://127.0.0.1:${server.address().port}`;

// The algorithms a client may ask to have its ID tokens and JARM responses encrypted with:
// the ones sigild decrypts (node-oidc-provider's defaults leave out ECDH-ES+A*KW).
const encryptionAlgs = ['RSA-OAEP', 'RSA-OAEP-256', 'ECDH-ES', 'ECDH-ES+A128KW', 'ECDH-ES+A256KW'];
const encryptionEncs = ['A128GCM', 'A256GCM', 'A128CBC-HS256', 'A256CBC-HS512'];

const OpClass = jarm ? SigildJarmProvider : Provider;
const provider = new OpClass(issuer, {
  clients,
  // the OP's own key first: it, not a sigild key of the same alg, signs ID tokens
  jwks: { keys: [await signingJwk('ES256'), ...(jarm?.jwks.keys ?? []).map((k) => new SigildJarmKey(k))] },
  cookies: { keys: ['sigild-test-op-cookie-key'] },
  features: {
    devInteractions: { enabled: true },
    encryption: { enabled: true },
    jwtResponseModes: { enabled: true },
    externalSigningSupport: { enabled: !!jarm, ack: 'experimental-01' },
  },
  enabledJWA: {
    idTokenSigningAlgValues: ['ES256'],
    // FAPI 2.0's algorithms; without JARM.json only the OP's own ES256 key signs
    authorizationSigningAlgValues: jarm ? ['ES256', 'PS256', 'EdDSA'] : ['ES256'],
    idTokenEncryptionAlgValues: encryptionAlgs,
    idTokenEncryptionEncValues: encryptionEncs,
    authorizationEncryptionAlgValues: encryptionAlgs,
    authorizationEncryptionEncValues: encryptionEncs,
  },
  // The ID token carries the nonce and the standard claims; the account is whoever logs in.
  findAccount: (ctx, sub) => ({ accountId: sub, claims: () => ({ sub }) }),
});
provider.on('server_error', (ctx, err) => console.error('server_error', err));

server.on('request', provider.callback());
process.stdout.write(`${JSON.stringify({ issuer })}\n`);

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => process.exit(0));
}
process.stdin.on('end', () => process.exit(0));
process.stdin.on('error', () => process.exit(0));
process.stdin.resume();
