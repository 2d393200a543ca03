// node-oidc-provider on sigild: ExternalSigningKey instances backed by sigild over mutual TLS or
// the Unix socket, following key rotation through WatchKeys. See README.md in this directory.
export { SigildClient, resolveEndpoint, devPointerPath, status, PROTO_DIR } from './client.mjs';
export { SigildKeySet, SigildSigningKey } from './keys.mjs';
export { sigildJwks, publishSigildJwks } from './provider.mjs';
