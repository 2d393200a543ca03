// A FAPI 2.0 OpenID Provider (node-oidc-provider) whose ID tokens sigild signs: pushed
// authorization requests only, signed request objects (JAR), DPoP-bound access tokens with
// server nonces, private_key_jwt client authentication, PKCE S256. Logins go through the
// provider's development interactions (any login name, any password).
import { randomBytes } from 'node:crypto';
import { createServer } from 'node:http';

import Provider from 'oidc-provider';

import { publishSigildJwks, sigildJwks } from '../lib/index.mjs';

// FAPI 2.0's signing algorithms (FAPI 2.0 Security Profile §5.4)
const FAPI_ALGS = ['PS256', 'ES256', 'EdDSA'];

/**
 * Starts the OP on 127.0.0.1:`port` (0 = any free port).
 *
 * @param {object} o
 * @param {import('../lib/client.mjs').SigildClient} o.client
 * @param {import('../lib/keys.mjs').SigildKeySet} o.keySet follows the OP's sigild key(s)
 * @param {object[]} o.clients client metadata (see rp.mjs: clientMetadata)
 * @param {number} [o.port]
 * @returns {Promise<{provider: Provider, server: import('node:http').Server, issuer: string}>}
 */
export async function startOp({ client, keySet, clients, port = 0 }) {
  const server = createServer();
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', resolve);
  });
  const issuer = `http://127.0.0.1:${server.address().port}`;

  const provider = new Provider(issuer, {
    clients,
    jwks: sigildJwks(client, keySet),
    cookies: { keys: [randomBytes(32).toString('base64url')] },
    clientAuthMethods: ['private_key_jwt'],
    // seconds; short-lived artifacts, as FAPI deployments keep them
    ttl: {
      AccessToken: 600,
      AuthorizationCode: 60,
      Grant: 3600,
      IdToken: 600,
      Interaction: 600,
      PushedAuthorizationRequest: 60,
      Session: 3600,
    },
    responseTypes: ['code'],
    features: {
      fapi: { enabled: true, profile: '2.0' },
      pushedAuthorizationRequests: { enabled: true, requirePushedAuthorizationRequests: true },
      requestObjects: { enabled: true, requireSignedRequestObject: true },
      dPoP: { enabled: true, nonceSecret: randomBytes(32), requireNonce: () => true },
      devInteractions: { enabled: true },
      externalSigningSupport: { enabled: true, ack: 'experimental-01' },
    },
    enabledJWA: {
      idTokenSigningAlgValues: FAPI_ALGS,
      requestObjectSigningAlgValues: FAPI_ALGS,
      clientAuthSigningAlgValues: FAPI_ALGS,
      dPoPSigningAlgValues: ['ES256', 'EdDSA'],
      authorizationSigningAlgValues: FAPI_ALGS,
      userinfoSigningAlgValues: FAPI_ALGS,
      introspectionSigningAlgValues: FAPI_ALGS,
    },
    findAccount: (ctx, sub) => ({ accountId: sub, claims: () => ({ sub }) }),
  });
  // node-oidc-provider's own log of what went wrong (a signature sigild refused, ...)
  provider.on('server_error', (ctx, err) => console.error('OP server_error:', err));
  publishSigildJwks(provider, keySet);
  server.on('request', provider.callback());
  return { provider, server, issuer };
}
