// sigild's gRPC API for node: the SigningService and KeyService clients, promisified, over
// mutual TLS or the Unix socket. The .proto files are read from the repository (proto/sigil/v1)
// at start, so the client always speaks the daemon's current API; no generated code to keep in
// step.
//
// Where the daemon is, in the order sigild's own CLI looks:
//   1. the `endpoint` option or SIGILD_ENDPOINT: `unix:/path/to.sock` or `https://host:port`
//      (with `ca`, `cert`, `key` or SIGILD_CA, SIGILD_CERT, SIGILD_KEY: PEM file paths);
//   2. the running `sigild dev` named by the user's dev pointer
//      ($XDG_RUNTIME_DIR/sigild/dev.json, else ~/.cache/sigild/dev.json): its Unix socket.
import { readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

import grpc from '@grpc/grpc-js';
import protoLoader from '@grpc/proto-loader';

/** The repository's proto directory (this package lives in examples/oidc-provider). */
export const PROTO_DIR = fileURLToPath(new URL('../../../proto', import.meta.url));

/** Where a running `sigild dev` records itself (see `sigild dev` in the README). */
export function devPointerPath(env = process.env) {
  const base = env.XDG_RUNTIME_DIR
    ? join(env.XDG_RUNTIME_DIR, 'sigild')
    : join(homedir(), '.cache', 'sigild');
  return join(base, 'dev.json');
}

/** The endpoint and credentials to use, from options, the environment or the dev pointer. */
export function resolveEndpoint(options = {}, env = process.env) {
  const endpoint = options.endpoint ?? env.SIGILD_ENDPOINT;
  if (endpoint) {
    return {
      endpoint,
      ca: options.ca ?? env.SIGILD_CA,
      cert: options.cert ?? env.SIGILD_CERT,
      key: options.key ?? env.SIGILD_KEY,
    };
  }
  let pointer;
  try {
    pointer = JSON.parse(readFileSync(devPointerPath(env), 'utf8'));
  } catch (e) {
    throw new Error(
      `no sigild endpoint: set SIGILD_ENDPOINT (unix:/path or https://host:port) or start \`sigild dev\` (${e.message})`,
    );
  }
  return { endpoint: `unix:${join(pointer.dir, 'sigild.sock')}` };
}

let packageCache;
function sigilPackage(protoDir) {
  if (!packageCache || packageCache.dir !== protoDir) {
    const definition = protoLoader.loadSync(
      ['sigil/v1/signing.proto', 'sigil/v1/keys.proto'],
      // bytes as Buffers, 64-bit integers as strings (generation), enums by name, defaults filled
      { includeDirs: [protoDir], keepCase: true, longs: String, enums: String, defaults: true },
    );
    packageCache = { dir: protoDir, pkg: grpc.loadPackageDefinition(definition).sigil.v1 };
  }
  return packageCache.pkg;
}

/** gRPC status codes by name (grpc.status), re-exported for callers that check errors. */
export const status = grpc.status;

function promisify(client, method) {
  return (request, deadlineMs = 10_000) => new Promise((resolve, reject) => {
    client[method](request, { deadline: Date.now() + deadlineMs }, (err, response) => {
      if (err) reject(err);
      else resolve(response);
    });
  });
}

/**
 * A connection to sigild: `signing` and `keys` hold the unary RPCs as promise-returning
 * functions (`await sigild.signing.SignJws({...})`); `watchKeys(names)` is the raw server stream.
 */
export class SigildClient {
  #signing;

  #keys;

  constructor(options = {}) {
    const { endpoint, ca, cert, key } = resolveEndpoint(options);
    const pkg = sigilPackage(options.protoDir ?? PROTO_DIR);
    let target;
    let credentials;
    const channelOverrides = {};
    if (endpoint.startsWith('unix:')) {
      // the daemon knows a Unix socket caller by its uid (peer credentials)
      target = endpoint;
      credentials = grpc.credentials.createInsecure();
    } else if (endpoint.startsWith('https://')) {
      if (!ca || !cert || !key) {
        throw new Error(`${endpoint}: mutual TLS needs ca, cert and key (SIGILD_CA, SIGILD_CERT, SIGILD_KEY)`);
      }
      const url = new URL(endpoint);
      target = url.host;
      // an IP address is no TLS server name (RFC 6066): present the dev certificate's DNS name
      // for loopback addresses instead (node warns otherwise); a real host name is sent as is
      if (/^(127\.|\[::1\]$)/.test(url.hostname)) {
        channelOverrides['grpc.ssl_target_name_override'] = 'localhost';
      }
      credentials = grpc.credentials.createSsl(
        readFileSync(ca),
        readFileSync(key),
        readFileSync(cert),
      );
    } else {
      throw new Error(`${endpoint}: expected unix:/path or https://host:port`);
    }
    this.endpoint = endpoint;
    const channelOptions = { 'grpc.keepalive_time_ms': 30_000, ...channelOverrides };
    this.#signing = new pkg.SigningService(target, credentials, channelOptions);
    this.#keys = new pkg.KeyService(target, credentials, channelOptions);
    this.signing = Object.fromEntries(
      ['SignJws', 'SignRaw', 'SignIdToken', 'SignRequestObject', 'SignClientAssertion',
        'SignDpopProof'].map((m) => [m, promisify(this.#signing, m)]),
    );
    this.keys = Object.fromEntries(
      ['CreateKey', 'ListKeys', 'GetKey', 'RotateKey', 'ActivateKeyVersion', 'RetireKeyVersion',
        'DestroyKeyVersion', 'GetJwks'].map((m) => [m, promisify(this.#keys, m)]),
    );
  }

  /** The WatchKeys server stream (a grpc-js ClientReadableStream of KeySet messages). */
  watchKeys(names = []) {
    return this.#keys.WatchKeys({ names });
  }

  /** Closes both channels. */
  close() {
    this.#signing.close();
    this.#keys.close();
  }
}
