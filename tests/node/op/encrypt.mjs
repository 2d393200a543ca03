// Encrypt a plaintext to a public JWK with node jose (an independent JWE producer for sigild's
// tests).
//
//   node encrypt.mjs '{"jwk": {...}, "alg": ALG, "enc": ENC, "plaintext": UTF8, "cty"?: CTY}'
//
// Prints the compact JWE on stdout. The protected header holds alg, enc, the JWK's kid and cty
// when given (a nested JWT: "JWT").
import { CompactEncrypt, importJWK } from 'jose';

const args = JSON.parse(process.argv[2] ?? '{}');
const key = await importJWK(args.jwk, args.alg);
const header = { alg: args.alg, enc: args.enc, kid: args.jwk.kid };
if (args.cty) header.cty = args.cty;
const jwe = await new CompactEncrypt(new TextEncoder().encode(args.plaintext))
  .setProtectedHeader(header)
  .encrypt(key);
process.stdout.write(`${jwe}\n`);
