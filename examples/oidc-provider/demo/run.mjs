// `npm start`: the FAPI 2.0 demo against a running sigild (by default the `sigild dev` of this
// user; else SIGILD_ENDPOINT with SIGILD_CA/SIGILD_CERT/SIGILD_KEY). It starts the OP, whose ID
// tokens sigild signs, runs one full login with the relying party, whose JAR, client-assertion
// and DPoP keys are on sigild too, prints what came back, and keeps the OP serving (Ctrl-C
// stops it) while it follows the OP key's rotations.
//
// Keys (names on sigild; `sigild dev` makes the defaults):
//   OP_KEY   the OP's ID token key              (default dev-es256)
//   RP_KEY   the client's JAR and assertion key (default dev-ps256)
//   DPOP_KEY the client's DPoP key              (default dev-eddsa)
//   PORT     the OP's port on 127.0.0.1         (default 3000)
// `--once`: exit after the login instead of serving.
import { SigildClient, SigildKeySet } from '../lib/index.mjs';
import { startOp } from './op.mjs';
import { clientMetadata, RelyingParty } from './rp.mjs';

const env = process.env;
const opKey = env.OP_KEY ?? 'dev-es256';
const rpKey = env.RP_KEY ?? 'dev-ps256';
const dpopKey = env.DPOP_KEY ?? 'dev-eddsa';
const once = process.argv.includes('--once');

const client = new SigildClient();
const keySet = await new SigildKeySet(client, [opKey]).start();
const idTokenAlg = keySet.active(opKey).alg;
console.log(`sigild at ${client.endpoint}: OP key ${opKey} v${keySet.active(opKey).version} kid ${keySet.active(opKey).kid} (${idTokenAlg}), key set followed by ${keySet.mode === 'watch' ? 'WatchKeys' : 'polling ListKeys'}`);
keySet.on('disconnect', (e) => console.error(`sigild unreachable (${e.message}); keeping the last key set`));

const clientId = 'demo-rp';
const redirectUri = 'https://rp.example.com/cb';
const metadata = await clientMetadata(client, { clientId, redirectUri, signingKey: rpKey, idTokenAlg });
const { server, issuer } = await startOp({
  client, keySet, clients: [metadata], port: Number(env.PORT ?? 3000),
});
console.log(`OP (FAPI 2.0: PAR + JAR, DPoP with nonce, private_key_jwt) at ${issuer}`);

const rp = new RelyingParty(client, {
  issuer, clientId, redirectUri, signingKey: rpKey, dpopKey, idTokenAlg,
});
const result = await rp.login('alice');
console.log('login as alice: ID token verified with jose against the OP\'s JWKS');
console.log('  header:', JSON.stringify(result.header));
console.log('  claims:', JSON.stringify(result.claims));
console.log('  access token:', result.tokens.token_type, `(cnf.jkt bound), userinfo: ${JSON.stringify(result.userinfo)}`);
console.log(`  id_token: ${result.idToken}`);

// At every change: what the OP publishes now, and after an activation one more login, whose ID
// token carries the new kid.
let shownKid = keySet.active(opKey).kid;
keySet.on('change', () => {
  const a = keySet.active(opKey);
  console.log(`key set changed: ${opKey} active v${a.version} kid ${a.kid}; the OP publishes ${keySet.jwks.keys.map((k) => k.kid).join(', ')}`);
  if (a.kid === shownKid) return;
  shownKid = a.kid;
  rp.login('alice').then(
    (r) => console.log(`login as alice after the activation: ID token kid ${r.header.kid}, verified`),
    (e) => console.error(`login after the activation failed: ${e.message}`),
  );
});

if (once) {
  keySet.close();
  client.close();
  server.close();
} else {
  console.log(`serving; try curl ${issuer}/.well-known/openid-configuration and ${issuer}/jwks`);
  console.log(`rotate the OP key meanwhile: sigild key rotate ${opKey} && sigild key activate ${opKey}`);
  process.on('SIGINT', () => process.exit(0));
  process.on('SIGTERM', () => process.exit(0));
}
