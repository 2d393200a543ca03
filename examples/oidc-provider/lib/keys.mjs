// Keys on sigild as node-oidc-provider sees them.
//
// SigildKeySet follows the published versions of some sigild keys: the whole set from
// WatchKeys at once and again at every change (rotation, activation, retirement, whether made
// through this daemon or another replica on the same token). Against a daemon without
// WatchKeys it polls ListKeys instead. It reconnects after the daemon restarts, keeping the last
// set it saw meanwhile.
//
// SigildSigningKey is an ExternalSigningKey standing for one sigild key name, not one version:
// its kid, alg and public key are those of the version active *now*, so node-oidc-provider puts
// the current kid in every header it builds without being rebuilt at a rotation. Its sign()
// splits the signing input node-oidc-provider assembled and sends both halves to SignJws byte
// for byte, so sigild's kid check and content policy apply to exactly what is signed. A header
// built just before an activation still names the old kid: sigild signs it with that version,
// which it allows for a grace period after the version stopped being active.
import { EventEmitter } from 'node:events';
import { createPublicKey } from 'node:crypto';

import { ExternalSigningKey } from 'oidc-provider';

import { status } from './client.mjs';

/**
 * The published versions of some sigild keys, kept current. Events: 'change' (the set
 * changed), 'disconnect' (sigild unreachable; the last set is kept, retried every second),
 * 'warning' (a set this OP cannot use, e.g. a key without an active version; the last one is
 * kept).
 */
export class SigildKeySet extends EventEmitter {
  #client;

  #names;

  #pollMs;

  #keys = new Map();

  #stream;

  #timer;

  #closed = false;

  /** The JWKS of the watched keys ({keys: [...]}), as sigild publishes it. */
  jwks = { keys: [] };

  /** The daemon's generation counter of the last KeySet (polling: a local counter). */
  generation = 0;

  /** 'watch' once WatchKeys answered, 'poll' when the daemon has no WatchKeys. */
  mode = undefined;

  /**
   * @param {import('./client.mjs').SigildClient} client
   * @param {string[]} names the sigild key names to follow
   * @param {{pollSeconds?: number}} [options] polling period without WatchKeys (default 5)
   */
  constructor(client, names, options = {}) {
    super();
    this.#client = client;
    this.#names = names;
    this.#pollMs = (options.pollSeconds ?? 5) * 1000;
  }

  /** The followed sigild key names. */
  get names() {
    return [...this.#names];
  }

  /** Resolves with the first key set (from WatchKeys, or ListKeys without it). */
  async start() {
    try {
      await new Promise((resolve, reject) => this.#watch(resolve, reject));
    } catch (e) {
      this.close();
      throw e;
    }
    return this;
  }

  #apply(keys, jwks, generation) {
    const wanted = new Set(this.#names);
    const mine = keys.filter((k) => wanted.has(k.name));
    for (const name of this.#names) {
      const key = mine.find((k) => k.name === name);
      if (!key) throw new Error(`sigild has no key ${name}`);
      if (!key.active_version) throw new Error(`sigild key ${name} has no active version`);
    }
    const before = JSON.stringify([...this.#keys.values()]);
    this.#keys = new Map(mine.map((k) => [k.name, k]));
    this.jwks = jwks;
    this.generation = generation;
    if (before !== JSON.stringify(mine)) this.emit('change', this);
  }

  #watch(resolve, reject) {
    if (this.#closed) return;
    let first = true;
    const stream = this.#client.watchKeys(this.#names);
    this.#stream = stream;
    stream.on('data', (set) => {
      try {
        this.mode = 'watch';
        this.#apply(set.keys, JSON.parse(set.jwks_json), Number(set.generation));
        if (first) resolve?.();
      } catch (e) {
        // a key set this OP cannot use (a key gone, no active version): keep the last one
        if (first && reject) reject(e);
        else this.emit('warning', e);
      }
      first = false;
    });
    stream.on('error', (err) => {
      if (this.#closed || err.code === status.CANCELLED) return;
      if (err.code === status.UNIMPLEMENTED) {
        // a daemon without WatchKeys: poll ListKeys
        this.mode = 'poll';
        this.#poll().then(() => resolve?.(), (e) => (reject ? reject(e) : this.emit('disconnect', e)));
        return;
      }
      if (first && reject) {
        // start() fails: the daemon is not reachable or refuses this caller
        reject(err);
        return;
      }
      // the daemon went away (restart, drain): keep the last set, try again shortly
      this.emit('disconnect', err);
      this.#rewatch(stream);
    });
    stream.on('end', () => {
      if (!first) this.#rewatch(stream);
    });
  }

  // Watches again in a second, once per ended stream (grpc-js may report both 'error' and
  // 'end' for one stream).
  #rewatch(stream) {
    if (this.#closed || stream !== this.#stream) return;
    this.#stream = undefined;
    // unref'd: following keys never keeps a process alive by itself
    this.#timer = setTimeout(() => this.#watch(), 1000).unref();
  }

  async #poll() {
    try {
      const [{ keys }, { jwks_json: jwksJson }] = await Promise.all([
        this.#client.keys.ListKeys({}),
        this.#client.keys.GetJwks({}),
      ]);
      // GetJwks publishes every key's versions: keep those of the followed keys
      const wanted = new Set(this.#names);
      const kids = new Set(keys.filter((k) => wanted.has(k.name)).flatMap((k) => k.versions.map((v) => v.kid)));
      const jwks = { keys: JSON.parse(jwksJson).keys.filter((k) => kids.has(k.kid)) };
      this.#apply(keys, jwks, this.generation + 1);
    } finally {
      if (!this.#closed) {
        this.#timer = setTimeout(() => this.#poll().catch((e) => this.emit('disconnect', e)), this.#pollMs).unref();
      }
    }
  }

  /** The sigild Key message of `name` (versions, states, kids). */
  key(name) {
    const key = this.#keys.get(name);
    if (!key) throw new Error(`sigild key ${name} is not followed here`);
    return key;
  }

  /** The active version of `name`: {version, kid, alg, jwk}. */
  active(name) {
    const key = this.key(name);
    const v = key.versions.find((x) => x.version === key.active_version);
    if (!v) throw new Error(`sigild key ${name}: active version ${key.active_version} is not listed`);
    return { version: v.version, kid: v.kid, alg: v.alg, jwk: JSON.parse(v.public_jwk_json) };
  }

  /** The version of `name` whose kid is `kid`, or 0 if none is known here. */
  versionOfKid(name, kid) {
    return this.key(name).versions.find((v) => v.kid === kid)?.version ?? 0;
  }

  /** Stops following (ends the WatchKeys stream or the polling). */
  close() {
    this.#closed = true;
    clearTimeout(this.#timer);
    this.#stream?.cancel();
  }
}

function b64urlDecode(s) {
  return Buffer.from(s, 'base64url');
}

/**
 * A node-oidc-provider signing key that is a sigild key name: always the active version's kid,
 * alg and public key; signatures made by sigild (SignJws).
 */
export class SigildSigningKey extends ExternalSigningKey {
  #client;

  #keys;

  #name;

  #publicKeys = new Map();

  /**
   * @param {import('./client.mjs').SigildClient} client
   * @param {SigildKeySet} keys a key set that follows `name`
   * @param {string} name the sigild key name
   */
  constructor(client, keys, name) {
    super();
    this.#client = client;
    this.#keys = keys;
    this.#name = name;
  }

  /** The sigild key name. */
  get name() {
    return this.#name;
  }

  get kid() {
    return this.#keys.active(this.#name).kid;
  }

  set kid(_value) {
    // fixed by sigild (the RFC 7638 thumbprint of the active version)
  }

  get alg() {
    return this.#keys.active(this.#name).alg;
  }

  set alg(_value) {
    // fixed by sigild
  }

  get kty() { return this.#keys.active(this.#name).jwk.kty; }

  get crv() { return this.#keys.active(this.#name).jwk.crv; }

  get x() { return this.#keys.active(this.#name).jwk.x; }

  get y() { return this.#keys.active(this.#name).jwk.y; }

  get n() { return this.#keys.active(this.#name).jwk.n; }

  get e() { return this.#keys.active(this.#name).jwk.e; }

  get pub() { return undefined; }

  keyObject() {
    const { kid, jwk } = this.#keys.active(this.#name);
    let key = this.#publicKeys.get(kid);
    if (!key) {
      key = createPublicKey({ key: jwk, format: 'jwk' });
      this.#publicKeys.set(kid, key);
    }
    return key;
  }

  /**
   * Signs the JWS signing input `data` (ASCII "b64url(header).b64url(payload)") with sigild and
   * returns the raw signature. The header's kid picks the version (sigild signs with a version
   * that stopped being active only within its grace period).
   */
  async sign(data) {
    const input = Buffer.isBuffer(data) ? data.toString('latin1') : String(data);
    const dot = input.indexOf('.');
    if (dot < 0 || input.indexOf('.', dot + 1) >= 0) {
      throw new Error('a JWS signing input has exactly one dot');
    }
    const header = b64urlDecode(input.slice(0, dot));
    const payload = b64urlDecode(input.slice(dot + 1));
    let kid;
    try {
      ({ kid } = JSON.parse(header.toString('utf8')));
    } catch {
      throw new Error('the protected header is not JSON');
    }
    const version = typeof kid === 'string' ? this.#keys.versionOfKid(this.#name, kid) : 0;
    const answer = await this.#client.signing.SignJws({
      key: this.#name,
      protected_header: header,
      payload,
      version,
    });
    // sigild encodes the same bytes: its compact form must start with exactly this input
    if (answer.compact !== `${input}.${answer.signature}`) {
      throw new Error(`sigild signed a different signing input for ${this.#name}`);
    }
    return b64urlDecode(answer.signature);
  }
}
