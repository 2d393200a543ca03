// Wiring sigild into a node-oidc-provider Provider: its signing keys and its published JWKS.
//
//   const sigild = new SigildClient();                       // mTLS or the Unix socket
//   const keys = await new SigildKeySet(sigild, ['op-es256']).start();
//   const provider = new Provider(issuer, {
//     jwks: sigildJwks(sigild, keys),                        // ExternalSigningKey per key name
//     features: { externalSigningSupport: { enabled: true, ack: 'experimental-01' }, ... },
//   });
//   publishSigildJwks(provider, keys);                      // jwks_uri follows rotation
//
// node-oidc-provider computes the JWKS it publishes once, at construction; sigild's key set
// changes (a `next` version is published before it signs, a retired one stays published until
// its tokens expire). publishSigildJwks answers the jwks route with the key set as sigild
// publishes it at that moment, so relying parties see a new version before it signs.
import { SigildSigningKey } from './keys.mjs';

/** The `jwks` configuration of a Provider whose keys are all the key set's sigild keys. */
export function sigildJwks(client, keySet, names = keySet.names) {
  return { keys: names.map((name) => new SigildSigningKey(client, keySet, name)) };
}

/** Makes the provider's jwks_uri answer with the key set's current JWKS. */
export function publishSigildJwks(provider, keySet) {
  provider.use(async (ctx, next) => {
    await next();
    if (ctx.oidc?.route === 'jwks' && ctx.status === 200) {
      ctx.body = keySet.jwks;
    }
  });
}
