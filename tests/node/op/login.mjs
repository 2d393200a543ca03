// A headless relying party for provider.mjs: it drives an authorization-code login through the
// OP's development interactions over real HTTP, and exchanges the code.
//
//   node login.mjs authorize '{"issuer","client_id","redirect_uri","nonce","state","login",
//                              "response_mode"?, "prompt"?, "client_assertion"?}'
//       [with client_assertion: POST /request (PAR, private_key_jwt), then only the request_uri
//       to /auth] GET /auth (PKCE S256) → the login prompt → POST login → the consent prompt → POST
//       consent → the redirect to redirect_uri. Prints {"redirect": URL, "params": {query},
//       "code_verifier": V}. With response_mode "jwt" the params hold `response` (the JARM JWT,
//       encrypted when the client asks for it), which this command does not open. With prompt
//       "none" (and no session) the OP answers login_required at once.
//   node login.mjs verify-jarm '{"issuer","cases":[{"client_id","response","algorithms"}, ...]}'
//       The relying party's check of signed JARM responses (JARM §2.4) with node jose: the
//       signature against the OP's published JWKS (found through discovery, fetched once), an
//       alg among `algorithms`, iss = issuer, aud = client_id, exp present and in the future.
//       Prints one result per case, in order: {"header","payload"} or {"error": why it does
//       not verify}; the caller checks state and code.
//   node login.mjs token '{"issuer","client_id","client_secret"|"client_assertion",
//                          "redirect_uri","code","code_verifier"}'
//       POST /token, the client authenticated with client_secret_basic or, given a
//       client_assertion, private_key_jwt; prints the token response.
//   node login.mjs jwks '{"issuer"}'
//       Prints the OP's published JWKS (from the discovery document's jwks_uri).
//
// Any unexpected answer from the OP ends the script with exit status 1 and the answer on stderr.
import { createHash, randomBytes } from 'node:crypto';

import { createRemoteJWKSet, jwtVerify } from 'jose';

const [command, argJson] = process.argv.slice(2);
const args = JSON.parse(argJson ?? '{}');

function fail(message) {
  console.error(message);
  process.exit(1);
}

// Cookies by name; the OP's cookie names are distinct, so paths can be ignored.
const jar = new Map();
function keepCookies(response) {
  for (const line of response.headers.getSetCookie()) {
    const [pair] = line.split(';');
    const eq = pair.indexOf('=');
    const name = pair.slice(0, eq).trim();
    const value = pair.slice(eq + 1).trim();
    if (value === '' || /expires=Thu, 01 Jan 1970/i.test(line)) jar.delete(name);
    else jar.set(name, value);
  }
}
async function request(url, init = {}) {
  const headers = { ...(init.headers ?? {}) };
  if (jar.size) headers.cookie = [...jar].map(([k, v]) => `${k}=${v}`).join('; ');
  const response = await fetch(url, { ...init, headers, redirect: 'manual' });
  keepCookies(response);
  return response;
}
async function expectRedirect(response, what) {
  const location = response.headers.get('location');
  if (response.status < 300 || response.status > 399 || !location) {
    fail(`${what}: expected a redirect, got ${response.status}: ${await response.text()}`);
  }
  return location;
}

// private_key_jwt client authentication (RFC 7523 §2.2).
function assertionParams() {
  return {
    client_id: args.client_id,
    client_assertion_type: 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer',
    client_assertion: args.client_assertion,
  };
}

async function authorize() {
  const codeVerifier = randomBytes(32).toString('base64url');
  const auth = new URL('/auth', args.issuer);
  const params = {
    client_id: args.client_id,
    response_type: 'code',
    scope: 'openid',
    redirect_uri: args.redirect_uri,
    nonce: args.nonce,
    state: args.state,
    code_challenge: createHash('sha256').update(codeVerifier).digest('base64url'),
    code_challenge_method: 'S256',
  };
  if (args.response_mode) params.response_mode = args.response_mode;
  if (args.prompt) params.prompt = args.prompt;
  if (args.client_assertion) {
    // pushed first (RFC 9126), the client authenticated; the front channel carries only the
    // request_uri
    const pushed = await fetch(new URL('/request', args.issuer), {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ ...params, ...assertionParams() }),
    });
    const answer = await pushed.text();
    if (pushed.status !== 201) fail(`POST /request: ${pushed.status}: ${answer}`);
    auth.searchParams.set('client_id', args.client_id);
    auth.searchParams.set('request_uri', JSON.parse(answer).request_uri);
  } else {
    for (const [k, v] of Object.entries(params)) auth.searchParams.set(k, v);
  }

  let location = await expectRedirect(await request(auth), 'GET /auth');
  // login, then consent: each an interaction page whose form names its prompt
  for (let step = 0; step < 6; step += 1) {
    const url = new URL(location, args.issuer);
    if (url.href.startsWith(args.redirect_uri)) {
      const query = Object.fromEntries(url.searchParams);
      return { redirect: url.href, params: query, code_verifier: codeVerifier };
    }
    if (!url.pathname.startsWith('/interaction/')) {
      location = await expectRedirect(await request(url), `GET ${url.pathname}`);
      continue;
    }
    const page = await request(url);
    const html = await page.text();
    if (page.status !== 200) fail(`GET ${url.pathname}: ${page.status}: ${html}`);
    const prompt = /name="prompt" value="(\w+)"/.exec(html)?.[1];
    const form = new URLSearchParams({ prompt });
    if (prompt === 'login') {
      form.set('login', args.login);
      form.set('password', 'any');
    } else if (prompt !== 'consent') {
      fail(`unexpected interaction page: ${html}`);
    }
    location = await expectRedirect(
      await request(url, {
        method: 'POST',
        body: form,
        headers: { 'content-type': 'application/x-www-form-urlencoded' },
      }),
      `POST ${url.pathname} (${prompt})`,
    );
  }
  return fail('the login did not reach the redirect_uri');
}

async function token() {
  const headers = { 'content-type': 'application/x-www-form-urlencoded' };
  const body = new URLSearchParams({
    grant_type: 'authorization_code',
    code: args.code,
    redirect_uri: args.redirect_uri,
    code_verifier: args.code_verifier,
  });
  if (args.client_assertion) {
    for (const [k, v] of Object.entries(assertionParams())) body.set(k, v);
  } else {
    const basic = Buffer.from(
      `${encodeURIComponent(args.client_id)}:${encodeURIComponent(args.client_secret)}`,
    ).toString('base64');
    headers.authorization = `Basic ${basic}`;
  }
  const response = await fetch(new URL('/token', args.issuer), { method: 'POST', headers, body });
  const answer = await response.text();
  if (response.status !== 200) fail(`POST /token: ${response.status}: ${answer}`);
  return JSON.parse(answer);
}

async function jwksUri() {
  const discovery = await fetch(new URL('/.well-known/openid-configuration', args.issuer));
  if (discovery.status !== 200) fail(`discovery: ${discovery.status}`);
  return (await discovery.json()).jwks_uri;
}

async function jwks() {
  const response = await fetch(await jwksUri());
  if (response.status !== 200) fail(`jwks: ${response.status}`);
  return response.json();
}

async function verifyJarm() {
  const keys = createRemoteJWKSet(new URL(await jwksUri()));
  const results = [];
  for (const { client_id: audience, response, algorithms } of args.cases) {
    try {
      const { payload, protectedHeader } = await jwtVerify(response, keys, {
        issuer: args.issuer,
        audience,
        algorithms,
        requiredClaims: ['exp'],
      });
      results.push({ header: protectedHeader, payload });
    } catch (e) {
      results.push({ error: `${e.code ?? 'ERR'}: ${e.message}` });
    }
  }
  return results;
}

const commands = { authorize, token, jwks, 'verify-jarm': verifyJarm };
if (!(command in commands)) {
  fail(`unknown command ${command}; use authorize, token, jwks or verify-jarm`);
}
process.stdout.write(`${JSON.stringify(await commands[command]())}\n`);
