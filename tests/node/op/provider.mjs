// A real OpenID Provider (node-oidc-provider) for sigild's end-to-end tests: it issues ID tokens
// and JARM responses encrypted to clients whose `jwks` hold sigild's decryption keys.
//
//   node provider.mjs CLIENTS.json
//
// CLIENTS.json is an array of client metadata (client_id, client_secret, redirect_uris, jwks,
// id_token_encrypted_response_alg/enc, authorization_encrypted_response_alg/enc, ...). The OP
// listens on 127.0.0.1 on a port the kernel picks, then prints one JSON line on stdout:
// {"issuer":"http://127.0.0.1:PORT"}. It runs until killed or until its stdin closes (so it
// dies with the test that started it, however that ends); its own log goes to stderr.
//
// The OP's signing key (ES256, for ID tokens and JARM responses) is generated at start and
// published at /jwks.
// Logins go through the OP's development interactions (see login.mjs).
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';

import { exportJWK, generateKeyPair } from 'jose';
import Provider from 'oidc-provider';

// stdout carries the one issuer line; the OP's notices (console.info) go to stderr with the rest.
console.info = console.error;

const [clientsFile] = process.argv.slice(2);
if (!clientsFile) {
  console.error('usage: node provider.mjs CLIENTS.json');
  process.exit(2);
}
const clients = JSON.parse(readFileSync(clientsFile, 'utf8'));

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

const provider = new Provider(issuer, {
  clients,
  jwks: { keys: [await signingJwk('ES256')] },
  cookies: { keys: ['sigild-test-op-cookie-key'] },
  features: {
    devInteractions: { enabled: true },
    encryption: { enabled: true },
    jwtResponseModes: { enabled: true },
  },
  enabledJWA: {
    idTokenSigningAlgValues: ['ES256'],
    authorizationSigningAlgValues: ['ES256'],
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
