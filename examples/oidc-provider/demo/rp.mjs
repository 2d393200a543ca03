// A FAPI 2.0 relying party whose keys are all on sigild: its request objects (JAR, signed with
// SignRequestObject), its client assertions (private_key_jwt, SignClientAssertion) and its DPoP
// proofs (SignDpopProof, with the server's nonce). It logs in through the OP's development
// interactions headlessly, over real HTTP, and checks the ID token with node jose against the
// JWKS the OP publishes at that moment.
import { createHash, randomBytes } from 'node:crypto';

import { createLocalJWKSet, jwtVerify } from 'jose';

/** The client metadata to register at the OP for a relying party on these sigild keys. */
export async function clientMetadata(client, { clientId, redirectUri, signingKey, idTokenAlg }) {
  const { keys } = JSON.parse((await client.keys.GetJwks({})).jwks_json);
  const key = await client.keys.GetKey({ name: signingKey });
  const kids = new Set(key.versions.map((v) => v.kid));
  const active = key.versions.find((v) => v.version === key.active_version);
  return {
    client_id: clientId,
    redirect_uris: [redirectUri],
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'private_key_jwt',
    token_endpoint_auth_signing_alg: active.alg,
    request_object_signing_alg: active.alg,
    id_token_signed_response_alg: idTokenAlg,
    dpop_bound_access_tokens: true,
    jwks: { keys: keys.filter((k) => kids.has(k.kid)) },
  };
}

class FlowError extends Error {}

/** One relying party: `login(user)` runs a whole authorization-code flow. */
export class RelyingParty {
  #client;

  #o;

  #metadata;

  // the latest DPoP nonces the OP handed out, for the token endpoint and the resource server
  #nonces = { token: undefined, userinfo: undefined };

  /**
   * @param {import('../lib/client.mjs').SigildClient} client
   * @param {{issuer: string, clientId: string, redirectUri: string, signingKey: string,
   *          dpopKey: string, idTokenAlg: string}} o
   */
  constructor(client, o) {
    this.#client = client;
    this.#o = o;
  }

  async #discover() {
    if (!this.#metadata) {
      const r = await fetch(new URL('/.well-known/openid-configuration', this.#o.issuer));
      if (r.status !== 200) throw new FlowError(`discovery: ${r.status}`);
      this.#metadata = await r.json();
    }
    return this.#metadata;
  }

  async #assertion() {
    const { compact } = await this.#client.signing.SignClientAssertion({
      key: this.#o.signingKey,
      client_id: this.#o.clientId,
      audience: this.#o.issuer, // FAPI 2.0: the issuer identifier
      lifetime_seconds: 60,
    });
    return {
      client_id: this.#o.clientId,
      client_assertion_type: 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer',
      client_assertion: compact,
    };
  }

  async #dpop(htm, htu, which, accessToken) {
    const { compact } = await this.#client.signing.SignDpopProof({
      key: this.#o.dpopKey,
      htm,
      htu,
      access_token: accessToken ?? '',
      nonce: this.#nonces[which] ?? '',
    });
    return compact;
  }

  // Sends a DPoP-proved request; asked for a (new) nonce, retries once with it. `makeInit`
  // builds the request anew for each attempt (a client assertion is single-use).
  async #withDpop(which, htm, htu, makeInit, accessToken) {
    for (let attempt = 0; ; attempt += 1) {
      const init = await makeInit();
      const headers = { ...init.headers, dpop: await this.#dpop(htm, htu, which, accessToken) };
      const response = await fetch(htu, { ...init, method: htm, headers });
      const nonce = response.headers.get('dpop-nonce');
      if (nonce) this.#nonces[which] = nonce;
      const challenge = `${response.headers.get('www-authenticate') ?? ''}`;
      const body = await response.text();
      const askedNonce = /use_dpop_nonce/.test(challenge) || /use_dpop_nonce/.test(body);
      if (askedNonce && nonce && attempt === 0) continue;
      return { response, body };
    }
  }

  /**
   * A full login as `user`: PAR (JAR + private_key_jwt) → /auth with the request_uri → login
   * and consent → the redirect with the code → /token (private_key_jwt + DPoP) → userinfo
   * (DPoP). Returns the verified ID token's header and claims, the token response and userinfo.
   */
  async login(user) {
    const meta = await this.#discover();
    const { issuer, clientId, redirectUri } = this.#o;
    const state = randomBytes(16).toString('base64url');
    const nonce = randomBytes(16).toString('base64url');
    const codeVerifier = randomBytes(32).toString('base64url');

    // 1. the request object, pushed with the client authenticated
    const { compact: request } = await this.#client.signing.SignRequestObject({
      key: this.#o.signingKey,
      client_id: clientId,
      audience: issuer,
      claims_json: JSON.stringify({
        response_type: 'code',
        redirect_uri: redirectUri,
        scope: 'openid',
        state,
        nonce,
        code_challenge: createHash('sha256').update(codeVerifier).digest('base64url'),
        code_challenge_method: 'S256',
      }),
      lifetime_seconds: 300,
    });
    const par = await fetch(meta.pushed_authorization_request_endpoint, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ request, ...(await this.#assertion()) }),
    });
    const parBody = await par.text();
    if (par.status !== 201) throw new FlowError(`PAR: ${par.status}: ${parBody}`);
    const auth = new URL(meta.authorization_endpoint);
    auth.searchParams.set('client_id', clientId);
    auth.searchParams.set('request_uri', JSON.parse(parBody).request_uri);

    // 2. the front channel, as a browser with its own cookies
    const params = await browse(auth, issuer, redirectUri, user);
    if (params.error) throw new FlowError(`authorization: ${params.error}: ${params.error_description}`);
    if (params.state !== state) throw new FlowError('authorization: state mismatch');
    if (params.iss !== issuer) throw new FlowError('authorization: iss mismatch (RFC 9207)');

    // 3. the code for tokens, DPoP-bound
    const { response: tr, body: tokenBody } = await this.#withDpop('token', 'POST', meta.token_endpoint, async () => ({
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({
        grant_type: 'authorization_code',
        code: params.code,
        redirect_uri: redirectUri,
        code_verifier: codeVerifier,
        ...(await this.#assertion()),
      }),
    }));
    if (tr.status !== 200) throw new FlowError(`token: ${tr.status}: ${tokenBody}`);
    const tokens = JSON.parse(tokenBody);
    if (tokens.token_type !== 'DPoP') throw new FlowError(`token: token_type ${tokens.token_type}`);

    // 4. the ID token against the JWKS the OP publishes now
    const jr = await fetch(meta.jwks_uri);
    if (jr.status !== 200) throw new FlowError(`jwks: ${jr.status}`);
    const jwks = await jr.json();
    let verified;
    try {
      verified = await jwtVerify(tokens.id_token, createLocalJWKSet(jwks), {
        issuer,
        audience: clientId,
        algorithms: [this.#o.idTokenAlg],
        requiredClaims: ['exp', 'iat', 'sub', 'nonce'],
      });
    } catch (e) {
      throw new FlowError(`ID token does not verify: ${e.code ?? ''} ${e.message}`);
    }
    if (verified.payload.nonce !== nonce) throw new FlowError('ID token: nonce mismatch');
    if (verified.payload.sub !== user) throw new FlowError('ID token: sub mismatch');

    // 5. userinfo with the DPoP-bound access token
    const { response: ur, body: userinfoBody } = await this.#withDpop('userinfo', 'GET', meta.userinfo_endpoint, () => ({
      headers: { authorization: `DPoP ${tokens.access_token}` },
    }), tokens.access_token);
    if (ur.status !== 200) throw new FlowError(`userinfo: ${ur.status}: ${userinfoBody}`);
    const userinfo = JSON.parse(userinfoBody);
    if (userinfo.sub !== user) throw new FlowError('userinfo: sub mismatch');

    return {
      idToken: tokens.id_token,
      header: verified.protectedHeader,
      claims: verified.payload,
      tokens,
      userinfo,
    };
  }
}

// The browser part: follows the OP's redirects, answers the login and consent pages of the
// development interactions, and stops at the redirect to `redirectUri` (its query returned).
async function browse(start, issuer, redirectUri, user) {
  const jar = new Map();
  const go = async (url, init = {}) => {
    const headers = { ...(init.headers ?? {}) };
    if (jar.size) headers.cookie = [...jar].map(([k, v]) => `${k}=${v}`).join('; ');
    const response = await fetch(url, { ...init, headers, redirect: 'manual' });
    for (const line of response.headers.getSetCookie()) {
      const [pair] = line.split(';');
      const eq = pair.indexOf('=');
      const name = pair.slice(0, eq).trim();
      const value = pair.slice(eq + 1).trim();
      if (value === '' || /expires=Thu, 01 Jan 1970/i.test(line)) jar.delete(name);
      else jar.set(name, value);
    }
    return response;
  };
  const location = async (response, what) => {
    const to = response.headers.get('location');
    if (response.status < 300 || response.status > 399 || !to) {
      throw new FlowError(`${what}: expected a redirect, got ${response.status}: ${await response.text()}`);
    }
    await response.arrayBuffer();
    return new URL(to, issuer);
  };

  let url = await location(await go(start), 'GET /auth');
  for (let step = 0; step < 8; step += 1) {
    if (url.href.startsWith(redirectUri)) return Object.fromEntries(url.searchParams);
    if (!url.pathname.startsWith('/interaction/')) {
      url = await location(await go(url), `GET ${url.pathname}`);
      continue;
    }
    const page = await go(url);
    const html = await page.text();
    if (page.status !== 200) throw new FlowError(`GET ${url.pathname}: ${page.status}: ${html}`);
    const prompt = /name="prompt" value="(\w+)"/.exec(html)?.[1];
    const form = new URLSearchParams({ prompt });
    if (prompt === 'login') {
      form.set('login', user);
      form.set('password', 'any');
    } else if (prompt !== 'consent') {
      throw new FlowError(`unexpected interaction page: ${html.slice(0, 200)}`);
    }
    url = await location(await go(url, {
      method: 'POST',
      body: form,
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
    }), `POST ${url.pathname} (${prompt})`);
  }
  throw new FlowError('the login did not reach the redirect_uri');
}
