//! Protocol fuzzing of a live daemon: thousands of random and mutated protobuf messages on
//! every RPC of the signing, decryption, key and health services, sent as raw bytes (a pass-through codec,
//! so malformed protobuf reaches the server), plus a few malformed gRPC frames.
//!
//! What must hold: every call is answered with a gRPC status within its deadline; the status
//! is one the API documents for that input (`INTERNAL` only for bytes that are not a valid
//! protobuf message of the request type, which is how gRPC servers answer those); every OK
//! signature verifies with an independent verifier (jwcrypto / cryptography, in one batch);
//! every OK decryption is of a JWE jwcrypto made, and gives back exactly its plaintext;
//! afterwards the same daemon process (same port, nothing restarts it) still answers health
//! and signs correctly, and its log holds no panic.
//!
//! `SIGILD_FUZZ_CASES` sets the number of messages (default 3000), `SIGILD_FUZZ_SEED` the seed
//! (printed, so a failing run can be repeated).

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use prost::Message as _;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256, Sha384};
use sigild::api::pb;
use support::stream::RawCodec;
use support::*;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

/// The longest any one call may take before it counts as a hang (generous: RSA keys are
/// generated on SoftHSM by some admin calls, on a shared machine).
const CALL_DEADLINE: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// A pass-through codec: the request is sent as the exact bytes given, the reply kept as bytes.

// ---------------------------------------------------------------------------------------------
// Randomness: SplitMix64, seeded and printed, so a run can be repeated.

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }

    /// Random bytes of a random length below `max`.
    fn bytes_upto(&mut self, max: usize) -> Vec<u8> {
        let len = self.below(max);
        self.bytes(len)
    }

    /// A string that is sometimes plausible, sometimes hostile (control characters, non-ASCII,
    /// JSON punctuation, very long).
    fn text(&mut self) -> String {
        match self.below(8) {
            0 => String::new(),
            1 => "x".repeat(self.below(5000)),
            2 => (0..self.below(20))
                .map(|_| char::from_u32(self.next() as u32 % 0x11_0000).unwrap_or('\u{fffd}'))
                .collect(),
            3 => (0..self.below(30))
                .map(|_| *self.pick(&['{', '}', '"', ':', ',', '[', ']', '\\', 'a', '1', '\0']))
                .collect(),
            4 => self
                .pick(&[
                    "none", "ES256", "PS256", "EdDSA", "HS256", "es256", "RS256", "*",
                ])
                .to_string(),
            _ => (0..self.below(16))
                .map(|_| (b'a' + (self.next() % 26) as u8) as char)
                .collect(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The RPCs and valid requests for each.

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Rpc {
    SignJws,
    SignRaw,
    /// One item on a `SignStream` (sent as a unary call: one message, then half-close).
    SignStream,
    SignTlsHandshake,
    SignIdToken,
    SignRequestObject,
    SignClientAssertion,
    SignDpopProof,
    SignAccessToken,
    SignLogoutToken,
    SignCibaRequest,
    SignJarm,
    SignIntrospection,
    SignUserinfo,
    SignHttpRequest,
    SignHttpResponse,
    SignDigest,
    CreateKey,
    ImportKey,
    AdoptKey,
    ListKeys,
    GetKey,
    RotateKey,
    ActivateKeyVersion,
    RetireKeyVersion,
    DestroyKeyVersion,
    GetJwks,
    SetCertificateChain,
    GetCertificateChain,
    DecryptJwe,
    HealthCheck,
    /// A method or service the server does not have.
    Unknown,
}

const RPCS: [Rpc; 32] = [
    Rpc::SignJws,
    Rpc::SignRaw,
    Rpc::SignStream,
    Rpc::SignTlsHandshake,
    Rpc::SignIdToken,
    Rpc::SignRequestObject,
    Rpc::SignClientAssertion,
    Rpc::SignDpopProof,
    Rpc::SignAccessToken,
    Rpc::SignLogoutToken,
    Rpc::SignCibaRequest,
    Rpc::SignJarm,
    Rpc::SignIntrospection,
    Rpc::SignUserinfo,
    Rpc::SignHttpRequest,
    Rpc::SignHttpResponse,
    Rpc::SignDigest,
    Rpc::CreateKey,
    Rpc::ImportKey,
    Rpc::AdoptKey,
    Rpc::ListKeys,
    Rpc::GetKey,
    Rpc::RotateKey,
    Rpc::ActivateKeyVersion,
    Rpc::RetireKeyVersion,
    Rpc::DestroyKeyVersion,
    Rpc::GetJwks,
    Rpc::SetCertificateChain,
    Rpc::GetCertificateChain,
    Rpc::DecryptJwe,
    Rpc::HealthCheck,
    Rpc::Unknown,
];

impl Rpc {
    fn path(self, rng: &mut Rng) -> String {
        let (service, method) = match self {
            Rpc::SignJws => ("sigil.v1.SigningService", "SignJws"),
            Rpc::SignRaw => ("sigil.v1.SigningService", "SignRaw"),
            Rpc::SignStream => ("sigil.v1.SigningService", "SignStream"),
            Rpc::SignTlsHandshake => ("sigil.v1.SigningService", "SignTlsHandshake"),
            Rpc::SignIdToken => ("sigil.v1.SigningService", "SignIdToken"),
            Rpc::SignRequestObject => ("sigil.v1.SigningService", "SignRequestObject"),
            Rpc::SignClientAssertion => ("sigil.v1.SigningService", "SignClientAssertion"),
            Rpc::SignDpopProof => ("sigil.v1.SigningService", "SignDpopProof"),
            Rpc::SignAccessToken => ("sigil.v1.SigningService", "SignAccessToken"),
            Rpc::SignLogoutToken => ("sigil.v1.SigningService", "SignLogoutToken"),
            Rpc::SignCibaRequest => ("sigil.v1.SigningService", "SignCibaRequest"),
            Rpc::SignJarm => ("sigil.v1.SigningService", "SignJarm"),
            Rpc::SignIntrospection => ("sigil.v1.SigningService", "SignIntrospection"),
            Rpc::SignUserinfo => ("sigil.v1.SigningService", "SignUserinfo"),
            Rpc::SignHttpRequest => ("sigil.v1.SigningService", "SignHttpRequest"),
            Rpc::SignHttpResponse => ("sigil.v1.SigningService", "SignHttpResponse"),
            Rpc::SignDigest => ("sigil.v1.SigningService", "SignDigest"),
            Rpc::CreateKey => ("sigil.v1.KeyService", "CreateKey"),
            Rpc::ImportKey => ("sigil.v1.KeyService", "ImportKey"),
            Rpc::AdoptKey => ("sigil.v1.KeyService", "AdoptKey"),
            Rpc::ListKeys => ("sigil.v1.KeyService", "ListKeys"),
            Rpc::GetKey => ("sigil.v1.KeyService", "GetKey"),
            Rpc::RotateKey => ("sigil.v1.KeyService", "RotateKey"),
            Rpc::ActivateKeyVersion => ("sigil.v1.KeyService", "ActivateKeyVersion"),
            Rpc::RetireKeyVersion => ("sigil.v1.KeyService", "RetireKeyVersion"),
            Rpc::DestroyKeyVersion => ("sigil.v1.KeyService", "DestroyKeyVersion"),
            Rpc::GetJwks => ("sigil.v1.KeyService", "GetJwks"),
            Rpc::SetCertificateChain => ("sigil.v1.KeyService", "SetCertificateChain"),
            Rpc::GetCertificateChain => ("sigil.v1.KeyService", "GetCertificateChain"),
            Rpc::DecryptJwe => ("sigil.v1.DecryptionService", "DecryptJwe"),
            Rpc::HealthCheck => ("grpc.health.v1.Health", "Check"),
            Rpc::Unknown => {
                return rng
                    .pick(&[
                        "/sigil.v1.SigningService/SignEverything",
                        "/sigil.v1.SigningService/signjws",
                        "/sigil.v1.KeyService/",
                        "/sigil.v2.SigningService/SignJws",
                        "/grpc.health.v1.Health/Watch2",
                        "/x/y",
                    ])
                    .to_string();
            }
        };
        format!("/{service}/{method}")
    }

    /// Whether the request bytes decode as this RPC's request type (what tonic will do first).
    fn decodes(self, bytes: &[u8]) -> bool {
        match self {
            Rpc::SignJws => pb::SignJwsRequest::decode(bytes).is_ok(),
            Rpc::SignRaw => pb::SignRawRequest::decode(bytes).is_ok(),
            Rpc::SignStream => pb::SignStreamRequest::decode(bytes).is_ok(),
            Rpc::SignTlsHandshake => pb::SignTlsHandshakeRequest::decode(bytes).is_ok(),
            Rpc::SignIdToken => pb::SignIdTokenRequest::decode(bytes).is_ok(),
            Rpc::SignRequestObject => pb::SignRequestObjectRequest::decode(bytes).is_ok(),
            Rpc::SignClientAssertion => pb::SignClientAssertionRequest::decode(bytes).is_ok(),
            Rpc::SignDpopProof => pb::SignDpopProofRequest::decode(bytes).is_ok(),
            Rpc::SignAccessToken => pb::SignAccessTokenRequest::decode(bytes).is_ok(),
            Rpc::SignLogoutToken => pb::SignLogoutTokenRequest::decode(bytes).is_ok(),
            Rpc::SignCibaRequest => pb::SignCibaRequestRequest::decode(bytes).is_ok(),
            Rpc::SignJarm => pb::SignJarmRequest::decode(bytes).is_ok(),
            Rpc::SignIntrospection => pb::SignIntrospectionRequest::decode(bytes).is_ok(),
            Rpc::SignUserinfo => pb::SignUserinfoRequest::decode(bytes).is_ok(),
            Rpc::SignHttpRequest => pb::SignHttpRequestRequest::decode(bytes).is_ok(),
            Rpc::SignHttpResponse => pb::SignHttpResponseRequest::decode(bytes).is_ok(),
            Rpc::SignDigest => pb::SignDigestRequest::decode(bytes).is_ok(),
            Rpc::CreateKey => pb::CreateKeyRequest::decode(bytes).is_ok(),
            Rpc::ImportKey => pb::ImportKeyRequest::decode(bytes).is_ok(),
            Rpc::AdoptKey => pb::AdoptKeyRequest::decode(bytes).is_ok(),
            Rpc::ListKeys => pb::ListKeysRequest::decode(bytes).is_ok(),
            Rpc::GetKey => pb::GetKeyRequest::decode(bytes).is_ok(),
            Rpc::RotateKey => pb::RotateKeyRequest::decode(bytes).is_ok(),
            Rpc::ActivateKeyVersion | Rpc::RetireKeyVersion | Rpc::DestroyKeyVersion => {
                pb::KeyVersionRequest::decode(bytes).is_ok()
            }
            Rpc::GetJwks => pb::GetJwksRequest::decode(bytes).is_ok(),
            Rpc::SetCertificateChain => pb::SetCertificateChainRequest::decode(bytes).is_ok(),
            Rpc::GetCertificateChain => pb::GetCertificateChainRequest::decode(bytes).is_ok(),
            Rpc::DecryptJwe => pb::DecryptJweRequest::decode(bytes).is_ok(),
            Rpc::HealthCheck => tonic_health::pb::HealthCheckRequest::decode(bytes).is_ok(),
            Rpc::Unknown => true,
        }
    }

    /// The codes a request that decodes may get: the API's documented refusals, plus
    /// ALREADY_EXISTS for the calls that create a named key.
    fn allowed(self, code: Code) -> bool {
        match self {
            Rpc::Unknown => code == Code::Unimplemented,
            Rpc::HealthCheck => matches!(code, Code::Ok | Code::NotFound),
            Rpc::CreateKey | Rpc::ImportKey | Rpc::AdoptKey if code == Code::AlreadyExists => true,
            _ => matches!(
                code,
                Code::Ok
                    | Code::InvalidArgument
                    | Code::NotFound
                    | Code::PermissionDenied
                    | Code::FailedPrecondition
                    | Code::Unavailable
                    | Code::ResourceExhausted
            ),
        }
    }
}

/// Keys the signing calls use; admin calls never name them (so their kids stay put and every
/// OK signature can be checked against them), except by a random mutation.
const SIGNING_KEYS: [(&str, &str); 4] = [
    ("fz-es", "ES256"),
    ("fz-es384", "ES384"),
    ("fz-ed", "EdDSA"),
    ("fz-ps", "PS256"),
];

/// The message whose digest valid `SignDigest` requests sign.
const DIGEST_MESSAGE: &[u8] = b"a message the caller hashed itself";

/// Keys the admin calls create, rotate, retire and destroy.
const ADMIN_KEYS: [&str; 4] = ["adm-a", "adm-b", "adm-c", "adm-d"];

/// A client's DPoP public key (RFC 7638 §3.1's example), for sender-constrained access tokens.
const DPOP_JWK: &str = r#"{"kty":"RSA","e":"AQAB","n":"0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"}"#;

/// The encryption key the decryption calls use (admin calls never name it).
const ENC_KEY: (&str, &str) = ("fz-enc", "ECDH-ES+A256KW");

/// Data the generator needs: kids of the signing keys, PKCS#8 documents to import, a
/// certificate to attach, JWEs (made by jwcrypto to the encryption key) with their plaintexts.
struct Fixtures {
    kids: BTreeMap<String, String>,
    pkcs8: Vec<(Vec<u8>, &'static str)>,
    cert_der: Vec<u8>,
    jwes: Vec<(String, Vec<u8>)>,
}

fn signing_key(rng: &mut Rng) -> (String, &'static str) {
    if rng.chance(5) {
        return (rng.pick(&["nope", "adm-a", ""]).to_string(), "ES256");
    }
    let (k, alg) = rng.pick(&SIGNING_KEYS);
    ((*k).to_owned(), alg)
}

fn admin_key(rng: &mut Rng) -> String {
    if rng.chance(10) {
        return rng
            .pick(&["fz-ed", "nope", "", "ADM-A", "adm a"])
            .to_string();
    }
    rng.pick(&ADMIN_KEYS).to_string()
}

fn alg_for_create(rng: &mut Rng) -> String {
    // No RSA in the admin pool: each RSA version would cost a key generation on SoftHSM.
    rng.pick(&["ES256", "ES384", "EdDSA", "Ed25519", "", "HS256"])
        .to_string()
}

/// A valid (or, for the names and versions it picks, plausibly valid) request for `rpc`.
fn valid_request(rpc: Rpc, rng: &mut Rng, fx: &Fixtures) -> Vec<u8> {
    let (key, alg) = signing_key(rng);
    match rpc {
        Rpc::SignStream => stream_item(rng, |rng, inner| valid_request(inner, rng, fx)),
        Rpc::SignJws => {
            let header = match rng.below(3) {
                0 => json!({"alg": alg, "typ": "JWT"}),
                1 => json!({"alg": alg, "kid": fx.kids.get(&key).cloned().unwrap_or_default()}),
                _ => json!({"alg": alg, "b64": true, "cty": "x"}),
            };
            pb::SignJwsRequest {
                version: 0,
                key,
                protected_header: header.to_string().into_bytes(),
                payload: if rng.chance(50) {
                    json!({"sub": "alice", "n": rng.next()})
                        .to_string()
                        .into_bytes()
                } else {
                    rng.bytes_upto(200)
                },
            }
            .encode_to_vec()
        }
        Rpc::SignDigest => pb::SignDigestRequest {
            digest: match alg {
                _ if rng.chance(10) => rng.bytes_upto(64),
                "ES384" => Sha384::digest(DIGEST_MESSAGE).to_vec(),
                _ => Sha256::digest(DIGEST_MESSAGE).to_vec(),
            },
            key,
            alg: if rng.chance(20) {
                rng.pick(&["PS384", "RS256", "ES256", "EdDSA"]).to_string()
            } else {
                String::new()
            },
            version: 0,
        }
        .encode_to_vec(),
        Rpc::SignRaw => pb::SignRawRequest {
            version: 0,
            key,
            data: rng.bytes_upto(300),
            alg: if rng.chance(50) {
                alg.into()
            } else {
                String::new()
            },
        }
        .encode_to_vec(),
        Rpc::SignTlsHandshake => pb::SignTlsHandshakeRequest {
            key,
            // Half TLS 1.3 CertificateVerify content, half anything (signed as raw).
            message: if rng.chance(50) {
                let mut m = vec![0x20; 64];
                m.extend_from_slice(if rng.chance(50) {
                    b"TLS 1.3, client CertificateVerify\0"
                } else {
                    b"TLS 1.3, server CertificateVerify\0"
                });
                m.extend(std::iter::repeat_with(|| rng.next() as u8).take(32));
                m
            } else {
                rng.bytes_upto(300)
            },
            alg: if rng.chance(50) {
                alg.into()
            } else {
                String::new()
            },
        }
        .encode_to_vec(),
        Rpc::SignIdToken => pb::SignIdTokenRequest {
            version: 0,
            state: String::new(),
            typ: String::new(),
            key,
            claims_json: json!({
                "iss": "https://op.example", "sub": format!("user{}", rng.below(100)),
                "aud": ["rp", "rs"], "nonce": "n-0S6_WzA2Mj", "auth_time": 1_700_000_000u64,
            })
            .to_string(),
            lifetime_seconds: *rng.pick(&[0, 1, 300, 86_400]),
            access_token: if rng.chance(50) {
                "at-123".into()
            } else {
                String::new()
            },
            code: if rng.chance(50) {
                "code-456".into()
            } else {
                String::new()
            },
        }
        .encode_to_vec(),
        Rpc::SignRequestObject => pb::SignRequestObjectRequest {
            key,
            client_id: "client-a".into(),
            audience: "https://as.example".into(),
            claims_json: json!({
                "response_type": "code", "scope": "openid", "redirect_uri": "https://rp/cb",
                "code_challenge": "abc", "code_challenge_method": "S256",
            })
            .to_string(),
            lifetime_seconds: *rng.pick(&[0, 60, 3600]),
        }
        .encode_to_vec(),
        Rpc::SignClientAssertion => pb::SignClientAssertionRequest {
            explicit_typ: false,
            nbf: false,
            key,
            client_id: "client-a".into(),
            audience: "https://as.example".into(),
            lifetime_seconds: *rng.pick(&[0, 60, 300]),
        }
        .encode_to_vec(),
        Rpc::SignDpopProof => pb::SignDpopProofRequest {
            key,
            htm: rng.pick(&["POST", "GET"]).to_string(),
            htu: rng
                .pick(&[
                    "https://rs.example/api?q=1#f",
                    "HTTPS://RS.example:443/x",
                    "http://[::1]:8080",
                ])
                .to_string(),
            access_token: if rng.chance(50) {
                "at-123".into()
            } else {
                String::new()
            },
            nonce: if rng.chance(30) {
                "eyJ7S_zG.eyJH0-Z.HX4w-7v".into()
            } else {
                String::new()
            },
        }
        .encode_to_vec(),
        Rpc::SignAccessToken => {
            // None, each, or two sender constraints (refused).
            let jkt = fx.kids.get("fz-es").cloned().unwrap_or_default();
            let (dpop_jwk_json, dpop_jkt, client_certificate) = match rng.below(5) {
                0 => (DPOP_JWK.to_owned(), String::new(), Vec::new()),
                1 => (String::new(), jkt, Vec::new()),
                2 => (String::new(), String::new(), fx.cert_der.clone()),
                3 => (String::new(), jkt, fx.cert_der.clone()),
                _ => (String::new(), String::new(), Vec::new()),
            };
            pb::SignAccessTokenRequest {
                key,
                issuer: "https://as.example".into(),
                audience: (0..=rng.below(3))
                    .map(|i| format!("https://rs{i}.example"))
                    .collect(),
                subject: format!("user{}", rng.below(100)),
                client_id: "client-a".into(),
                scope: rng.pick(&["", "openid", "read write"]).to_string(),
                claims_json: rng
                    .pick(&[
                        "",
                        r#"{"auth_time":1700000000,"acr":"1"}"#,
                        r#"{"cnf":{"jkt":"x"}}"#,
                    ])
                    .to_string(),
                lifetime_seconds: *rng.pick(&[0, 60, 3600, 3601]),
                dpop_jwk_json,
                dpop_jkt,
                client_certificate,
            }
            .encode_to_vec()
        }
        Rpc::SignLogoutToken => pb::SignLogoutTokenRequest {
            key,
            issuer: "https://op.example".into(),
            audience: "client-a".into(),
            subject: if rng.chance(70) {
                format!("user{}", rng.below(100))
            } else {
                String::new()
            },
            sid: if rng.chance(70) {
                "sid-1".into()
            } else {
                String::new()
            },
            claims_json: rng.pick(&["", "{}", r#"{"nonce":"n"}"#]).to_string(),
            lifetime_seconds: *rng.pick(&[0, 120, 600, 601]),
        }
        .encode_to_vec(),
        Rpc::SignCibaRequest => pb::SignCibaRequestRequest {
            key,
            client_id: "client-a".into(),
            audience: "https://op.example".into(),
            claims_json: rng
                .pick(&[
                    r#"{"scope":"openid","login_hint":"alice","binding_message":"W4SCT"}"#,
                    r#"{"scope":"openid email","id_token_hint":"e30.e30.x"}"#,
                    r#"{"scope":"openid"}"#,
                ])
                .to_string(),
            lifetime_seconds: *rng.pick(&[0, 300, 3600, 3601]),
        }
        .encode_to_vec(),
        Rpc::SignJarm => pb::SignJarmRequest {
            key,
            issuer: "https://as.example".into(),
            client_id: "client-a".into(),
            response_json: if rng.chance(70) {
                json!({"code": format!("code-{}", rng.below(1000)), "state": "af0ifjsldkj"})
            } else {
                json!({"error": "access_denied", "state": "af0ifjsldkj"})
            }
            .to_string(),
            lifetime_seconds: *rng.pick(&[0, 1, 60, 600]),
        }
        .encode_to_vec(),
        Rpc::SignIntrospection => pb::SignIntrospectionRequest {
            key,
            issuer: "https://as.example".into(),
            audience: "https://rs.example".into(),
            introspection_json: if rng.chance(70) {
                json!({"active": true, "client_id": "client-a", "scope": "read",
                       "sub": format!("user{}", rng.below(100)), "exp": 1_700_000_300u64})
            } else {
                json!({"active": false})
            }
            .to_string(),
        }
        .encode_to_vec(),
        Rpc::SignUserinfo => pb::SignUserinfoRequest {
            key,
            issuer: "https://op.example".into(),
            audience: "client-a".into(),
            claims_json: json!({"sub": format!("user{}", rng.below(100)),
                                "email": "user@example.com", "email_verified": true})
            .to_string(),
        }
        .encode_to_vec(),
        Rpc::SignHttpRequest => pb::SignHttpRequestRequest {
            key,
            method: rng.pick(&["POST", "GET"]).to_string(),
            target_uri: rng
                .pick(&[
                    "https://rs.example/api?q=1",
                    "HTTPS://RS.example:443/x",
                    "http://[::1]:8080",
                ])
                .to_string(),
            headers: http_fields(rng),
            body: if rng.chance(50) {
                br#"{"amount": 10}"#.to_vec()
            } else {
                Vec::new()
            },
            label: rng.pick(&["", "sig", "fapi"]).to_string(),
        }
        .encode_to_vec(),
        Rpc::SignHttpResponse => {
            let mut request_headers = http_fields(rng);
            request_headers.push(field(
                "Signature-Input",
                "sig=(\"@method\" \"@target-uri\");created=1700000000;keyid=\"k\";tag=\"fapi-2-request\"",
            ));
            request_headers.push(field("Signature", "sig=:AAAA:"));
            pb::SignHttpResponseRequest {
                key,
                status: *rng.pick(&[200, 201, 404]),
                headers: vec![field("Content-Type", "application/json")],
                body: if rng.chance(50) {
                    br#"{"ok": true}"#.to_vec()
                } else {
                    Vec::new()
                },
                request_method: "POST".into(),
                request_target_uri: "https://rs.example/api".into(),
                request_headers,
                request_label: rng.pick(&["", "sig"]).to_string(),
                label: String::new(),
            }
            .encode_to_vec()
        }
        Rpc::CreateKey => pb::CreateKeyRequest {
            serves: Vec::new(),
            name: admin_key(rng),
            alg: alg_for_create(rng),
            rsa_bits: 0,
            fapi2: rng.chance(30),
            curve: String::new(),
        }
        .encode_to_vec(),
        Rpc::ImportKey => {
            let (der, alg) = rng.pick(&fx.pkcs8).clone();
            pb::ImportKeyRequest {
                serves: Vec::new(),
                name: admin_key(rng),
                alg: alg.into(),
                pkcs8_der: der,
                fapi2: rng.chance(30),
            }
            .encode_to_vec()
        }
        Rpc::AdoptKey => pb::AdoptKeyRequest {
            serves: Vec::new(),
            name: admin_key(rng),
            alg: "ES256".into(),
            uri: rng
                .pick(&[
                    "pkcs11:token=sigild-test;object=nothing;type=private",
                    "pkcs11:token=sigild-test;id=%01%02;type=private",
                    "pkcs11:token=other;object=x",
                    "pkcs11:id=%+1",
                ])
                .to_string(),
            fapi2: false,
        }
        .encode_to_vec(),
        Rpc::ListKeys => pb::ListKeysRequest {}.encode_to_vec(),
        Rpc::GetKey => pb::GetKeyRequest {
            name: if rng.chance(50) { key } else { admin_key(rng) },
        }
        .encode_to_vec(),
        Rpc::RotateKey => pb::RotateKeyRequest {
            name: admin_key(rng),
            alg: if rng.chance(70) {
                String::new()
            } else {
                alg_for_create(rng)
            },
            rsa_bits: 0,
            curve: String::new(),
        }
        .encode_to_vec(),
        Rpc::ActivateKeyVersion | Rpc::RetireKeyVersion | Rpc::DestroyKeyVersion => {
            pb::KeyVersionRequest {
                name: admin_key(rng),
                version: rng.below(4) as u32,
            }
            .encode_to_vec()
        }
        Rpc::GetJwks => pb::GetJwksRequest {}.encode_to_vec(),
        Rpc::SetCertificateChain => pb::SetCertificateChainRequest {
            name: admin_key(rng),
            version: rng.below(3) as u32,
            certificates: vec![fx.cert_der.clone()],
        }
        .encode_to_vec(),
        Rpc::GetCertificateChain => pb::GetCertificateChainRequest {
            name: if rng.chance(50) { key } else { admin_key(rng) },
            version: rng.below(3) as u32,
        }
        .encode_to_vec(),
        Rpc::DecryptJwe => {
            let (jwe, _) = rng.pick(&fx.jwes);
            let names = |rng: &mut Rng, good: &str, all: &[&str]| -> Vec<String> {
                match rng.below(4) {
                    0 => vec![good.to_owned()],
                    1 => vec![rng.pick(all).to_string()],
                    _ => Vec::new(),
                }
            };
            pb::DecryptJweRequest {
                key: if rng.chance(90) {
                    ENC_KEY.0.to_owned()
                } else {
                    key
                },
                jwe: jwe.clone().into_bytes(),
                allowed_algs: names(
                    rng,
                    ENC_KEY.1,
                    &["RSA-OAEP-256", "ECDH-ES", "RSA1_5", "A256GCM"],
                ),
                allowed_encs: names(rng, "A256GCM", &["A128GCM", "A256CBC-HS512", "none"]),
            }
            .encode_to_vec()
        }
        Rpc::HealthCheck => tonic_health::pb::HealthCheckRequest {
            service: rng
                .pick(&[
                    "",
                    "sigil.v1.SigningService",
                    "sigil.v1.DecryptionService",
                    "sigil.v1.KeyService",
                    "nope",
                ])
                .to_string(),
        }
        .encode_to_vec(),
        Rpc::Unknown => rng.bytes_upto(20),
    }
}

/// Valid protobuf of the RPC's request type, every field filled with random content.
/// A `SignStream` item wrapping a request of one of the signing RPCs the stream carries, made
/// by `make` (valid or random), or now and then an item without a request.
fn stream_item(rng: &mut Rng, make: impl Fn(&mut Rng, Rpc) -> Vec<u8>) -> Vec<u8> {
    use pb::sign_stream_request::Request as Item;
    let id = rng.next();
    let inner = *rng.pick(&[
        Rpc::SignJws,
        Rpc::SignRaw,
        Rpc::SignIdToken,
        Rpc::SignClientAssertion,
        Rpc::SignDpopProof,
        Rpc::SignRequestObject,
        Rpc::SignAccessToken,
        Rpc::Unknown,
    ]);
    let bytes = make(rng, inner);
    let request = match inner {
        Rpc::SignJws => pb::SignJwsRequest::decode(bytes.as_slice())
            .ok()
            .map(Item::Jws),
        Rpc::SignRaw => pb::SignRawRequest::decode(bytes.as_slice())
            .ok()
            .map(Item::Raw),
        Rpc::SignIdToken => pb::SignIdTokenRequest::decode(bytes.as_slice())
            .ok()
            .map(Item::IdToken),
        Rpc::SignClientAssertion => pb::SignClientAssertionRequest::decode(bytes.as_slice())
            .ok()
            .map(Item::ClientAssertion),
        Rpc::SignDpopProof => pb::SignDpopProofRequest::decode(bytes.as_slice())
            .ok()
            .map(Item::DpopProof),
        Rpc::SignRequestObject => pb::SignRequestObjectRequest::decode(bytes.as_slice())
            .ok()
            .map(Item::RequestObject),
        Rpc::SignAccessToken => pb::SignAccessTokenRequest::decode(bytes.as_slice())
            .ok()
            .map(Item::AccessToken),
        _ => None,
    };
    pb::SignStreamRequest { id, request }.encode_to_vec()
}

fn random_fields(rpc: Rpc, rng: &mut Rng) -> Vec<u8> {
    let n = |rng: &mut Rng| -> u32 {
        if rng.chance(50) {
            rng.below(5) as u32
        } else {
            rng.next() as u32
        }
    };
    match rpc {
        Rpc::SignStream => stream_item(rng, |rng, inner| random_fields(inner, rng)),
        Rpc::SignJws => pb::SignJwsRequest {
            version: 0,
            key: rng.text(),
            protected_header: rng.text().into_bytes(),
            payload: rng.text().into_bytes(),
        }
        .encode_to_vec(),
        Rpc::SignRaw => pb::SignRawRequest {
            version: 0,
            key: rng.text(),
            data: rng.text().into_bytes(),
            alg: rng.text(),
        }
        .encode_to_vec(),
        Rpc::SignDigest => pb::SignDigestRequest {
            key: rng.text(),
            alg: rng.text(),
            digest: rng.text().into_bytes(),
            version: n(rng),
        }
        .encode_to_vec(),
        Rpc::SignTlsHandshake => pb::SignTlsHandshakeRequest {
            key: rng.text(),
            message: rng.text().into_bytes(),
            alg: rng.text(),
        }
        .encode_to_vec(),
        Rpc::SignIdToken => pb::SignIdTokenRequest {
            version: 0,
            state: String::new(),
            typ: String::new(),
            key: signing_key(rng).0,
            claims_json: rng.text(),
            lifetime_seconds: n(rng),
            access_token: rng.text(),
            code: rng.text(),
        }
        .encode_to_vec(),
        Rpc::SignRequestObject => pb::SignRequestObjectRequest {
            key: signing_key(rng).0,
            client_id: rng.text(),
            audience: rng.text(),
            claims_json: rng.text(),
            lifetime_seconds: n(rng),
        }
        .encode_to_vec(),
        Rpc::SignClientAssertion => pb::SignClientAssertionRequest {
            explicit_typ: false,
            nbf: false,
            key: signing_key(rng).0,
            client_id: rng.text(),
            audience: rng.text(),
            lifetime_seconds: n(rng),
        }
        .encode_to_vec(),
        Rpc::SignDpopProof => pb::SignDpopProofRequest {
            key: signing_key(rng).0,
            htm: rng.text(),
            htu: rng.text(),
            access_token: rng.text(),
            nonce: rng.text(),
        }
        .encode_to_vec(),
        Rpc::SignAccessToken => pb::SignAccessTokenRequest {
            key: signing_key(rng).0,
            issuer: rng.text(),
            audience: (0..rng.below(3)).map(|_| rng.text()).collect(),
            subject: rng.text(),
            client_id: rng.text(),
            scope: rng.text(),
            claims_json: rng.text(),
            lifetime_seconds: n(rng),
            dpop_jwk_json: rng.text(),
            dpop_jkt: rng.text(),
            client_certificate: rng.bytes_upto(200),
        }
        .encode_to_vec(),
        Rpc::SignLogoutToken => pb::SignLogoutTokenRequest {
            key: signing_key(rng).0,
            issuer: rng.text(),
            audience: rng.text(),
            subject: rng.text(),
            sid: rng.text(),
            claims_json: rng.text(),
            lifetime_seconds: n(rng),
        }
        .encode_to_vec(),
        Rpc::SignCibaRequest => pb::SignCibaRequestRequest {
            key: signing_key(rng).0,
            client_id: rng.text(),
            audience: rng.text(),
            claims_json: rng.text(),
            lifetime_seconds: n(rng),
        }
        .encode_to_vec(),
        Rpc::SignJarm => pb::SignJarmRequest {
            key: signing_key(rng).0,
            issuer: rng.text(),
            client_id: rng.text(),
            response_json: rng.text(),
            lifetime_seconds: n(rng),
        }
        .encode_to_vec(),
        Rpc::SignIntrospection => pb::SignIntrospectionRequest {
            key: signing_key(rng).0,
            issuer: rng.text(),
            audience: rng.text(),
            introspection_json: rng.text(),
        }
        .encode_to_vec(),
        Rpc::SignUserinfo => pb::SignUserinfoRequest {
            key: signing_key(rng).0,
            issuer: rng.text(),
            audience: rng.text(),
            claims_json: rng.text(),
        }
        .encode_to_vec(),
        Rpc::SignHttpRequest => pb::SignHttpRequestRequest {
            key: signing_key(rng).0,
            method: rng.text(),
            target_uri: rng.text(),
            headers: (0..rng.below(4))
                .map(|_| field(&rng.text(), &rng.text()))
                .collect(),
            body: rng.text().into_bytes(),
            label: rng.text(),
        }
        .encode_to_vec(),
        Rpc::SignHttpResponse => pb::SignHttpResponseRequest {
            key: signing_key(rng).0,
            status: n(rng),
            headers: (0..rng.below(4))
                .map(|_| field(&rng.text(), &rng.text()))
                .collect(),
            body: rng.text().into_bytes(),
            request_method: rng.text(),
            request_target_uri: rng.text(),
            request_headers: (0..rng.below(4))
                .map(|_| field(&rng.text(), &rng.text()))
                .collect(),
            request_label: rng.text(),
            label: rng.text(),
        }
        .encode_to_vec(),
        Rpc::CreateKey => pb::CreateKeyRequest {
            serves: Vec::new(),
            name: rng.text(),
            alg: rng.text(),
            // Any size, but never an RSA generation: the alg is random text, rarely an RSA alg.
            rsa_bits: n(rng),
            fapi2: rng.chance(50),
            curve: rng.text(),
        }
        .encode_to_vec(),
        Rpc::ImportKey => pb::ImportKeyRequest {
            serves: Vec::new(),
            name: rng.text(),
            alg: rng.text(),
            pkcs8_der: rng.bytes_upto(300),
            fapi2: rng.chance(50),
        }
        .encode_to_vec(),
        Rpc::AdoptKey => pb::AdoptKeyRequest {
            serves: Vec::new(),
            name: admin_key(rng),
            alg: rng.text(),
            uri: format!("pkcs11:{}", rng.text()),
            fapi2: rng.chance(50),
        }
        .encode_to_vec(),
        Rpc::GetKey => pb::GetKeyRequest { name: rng.text() }.encode_to_vec(),
        Rpc::RotateKey => pb::RotateKeyRequest {
            name: rng.text(),
            alg: rng.text(),
            rsa_bits: n(rng),
            curve: rng.text(),
        }
        .encode_to_vec(),
        Rpc::ActivateKeyVersion | Rpc::RetireKeyVersion | Rpc::DestroyKeyVersion => {
            pb::KeyVersionRequest {
                name: if rng.chance(50) {
                    admin_key(rng)
                } else {
                    rng.text()
                },
                version: n(rng),
            }
            .encode_to_vec()
        }
        Rpc::SetCertificateChain => pb::SetCertificateChainRequest {
            name: admin_key(rng),
            version: n(rng),
            certificates: (0..rng.below(4)).map(|_| rng.bytes_upto(200)).collect(),
        }
        .encode_to_vec(),
        Rpc::GetCertificateChain => pb::GetCertificateChainRequest {
            name: rng.text(),
            version: n(rng),
        }
        .encode_to_vec(),
        Rpc::DecryptJwe => pb::DecryptJweRequest {
            key: if rng.chance(50) {
                ENC_KEY.0.to_owned()
            } else {
                rng.text()
            },
            jwe: if rng.chance(50) {
                rng.text().into_bytes()
            } else {
                rng.bytes_upto(400)
            },
            allowed_algs: (0..rng.below(3)).map(|_| rng.text()).collect(),
            allowed_encs: (0..rng.below(3)).map(|_| rng.text()).collect(),
        }
        .encode_to_vec(),
        Rpc::HealthCheck => tonic_health::pb::HealthCheckRequest {
            service: rng.text(),
        }
        .encode_to_vec(),
        Rpc::ListKeys | Rpc::GetJwks | Rpc::Unknown => rng.bytes_upto(10),
    }
}

// ---------------------------------------------------------------------------------------------
// Protobuf-level mutations.

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn tag(field: u32, wire: u8, out: &mut Vec<u8>) {
    varint((u64::from(field) << 3) | u64::from(wire), out);
}

/// The top-level fields of a valid encoding: (start, end, field number, wire type).
fn fields(b: &[u8]) -> Vec<(usize, usize, u32, u8)> {
    fn read_varint(b: &[u8], i: &mut usize) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *b.get(*i)?;
            *i += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return Some(v);
            }
        }
        None
    }
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let start = i;
        let Some(key) = read_varint(b, &mut i) else {
            break;
        };
        let wire = (key & 7) as u8;
        match wire {
            0 => {
                if read_varint(b, &mut i).is_none() {
                    break;
                }
            }
            1 => i += 8,
            2 => match read_varint(b, &mut i) {
                Some(len) => i += len as usize,
                None => break,
            },
            5 => i += 4,
            _ => break,
        }
        if i > b.len() {
            break;
        }
        out.push((start, i, (key >> 3) as u32, wire));
    }
    out
}

/// Mutate a valid encoding; returns the mutation's name (for the summary) and the bytes.
fn mutate(rpc: Rpc, valid: Vec<u8>, rng: &mut Rng) -> (&'static str, Vec<u8>) {
    let mut b = valid;
    let which = rng.below(100);
    let name = match which {
        0..=13 => "valid",
        14..=18 => {
            b = rng.bytes_upto(300);
            "random bytes"
        }
        19..=25 => {
            for _ in 0..=rng.below(4) {
                if !b.is_empty() {
                    let i = rng.below(b.len());
                    b[i] ^= (rng.next() as u8) | 1;
                }
            }
            "flipped bytes"
        }
        26..=31 => {
            b.truncate(rng.below(b.len() + 1));
            "truncated"
        }
        32..=35 => {
            let tail = rng.bytes_upto(40);
            let tail = if tail.is_empty() { vec![0] } else { tail };
            b.extend(tail);
            "extended"
        }
        36..=41 => {
            let f = fields(&b);
            if f.is_empty() {
                b = rng.bytes(8);
            } else {
                let (start, end, num, _) = *rng.pick(&f);
                let mut out = b[..start].to_vec();
                let mut rest = b[start..end].to_vec();
                // Re-tag the field with another wire type, keeping its contents.
                let mut t = Vec::new();
                tag(num, rng.below(8) as u8, &mut t);
                let mut key_len = 0;
                while rest.get(key_len).is_some_and(|x| *x >= 0x80) {
                    key_len += 1;
                }
                rest.splice(..=key_len.min(rest.len().saturating_sub(1)), t);
                out.extend(rest);
                out.extend_from_slice(&b[end..]);
                b = out;
            }
            "wrong wire type"
        }
        42..=46 => {
            tag(1 + rng.below(6) as u32, 2, &mut b);
            let len = *rng.pick(&[
                1 << 31,
                u32::MAX as u64,
                1 << 62,
                u64::MAX,
                (b.len() + 5) as u64,
            ]);
            varint(len, &mut b);
            let tail = rng.bytes_upto(16);
            b.extend(tail);
            "huge length"
        }
        47..=51 => {
            // A string field (1 is a string in every request but the bytes of SignRaw's `data`
            // and SignTlsHandshake's `message`, 2)
            // with bytes that are not UTF-8; proto3 requires valid UTF-8 in strings.
            let field = *rng.pick(&[1u32, 2, 3, 4, 5]);
            let mut bad = b"ok".to_vec();
            let invalid: [&[u8]; 4] = [&[0xff], &[0xc0, 0x80], &[0xed, 0xa0, 0x80], &[0xe2, 0x82]];
            let pick = rng.pick(&invalid);
            bad.extend_from_slice(pick);
            tag(field, 2, &mut b);
            varint(bad.len() as u64, &mut b);
            b.extend(bad);
            "invalid utf-8"
        }
        52..=61 => {
            // Numeric and bool fields (versions, lifetimes, rsa_bits, fapi2) with any value,
            // including ones that overflow u32 and bools other than 0/1.
            let field = *rng.pick(&[2u32, 3, 4, 5]);
            tag(field, 0, &mut b);
            let any = rng.next();
            let v = *rng.pick(&[
                2,
                u64::from(u32::MAX),
                u64::from(u32::MAX) + 1,
                u64::MAX,
                any,
            ]);
            varint(v, &mut b);
            "random numbers"
        }
        62..=69 => {
            for _ in 0..=rng.below(3) {
                let num = 6 + rng.below(1 << 20) as u32;
                match rng.below(3) {
                    0 => {
                        tag(num, 0, &mut b);
                        varint(rng.next(), &mut b);
                    }
                    1 => {
                        tag(num, 2, &mut b);
                        let v = rng.bytes_upto(20);
                        varint(v.len() as u64, &mut b);
                        b.extend(v);
                    }
                    _ => {
                        tag(num, 5, &mut b);
                        b.extend(rng.bytes(4));
                    }
                }
            }
            "unknown fields"
        }
        70..=74 => {
            let f = fields(&b);
            if let Some((start, end, _, _)) = f.get(rng.below(f.len())).copied() {
                let copy = b[start..end].to_vec();
                b.extend(copy);
            }
            "repeated field"
        }
        75..=77 => {
            // Nested groups of an unknown field: balanced (skipped) or not (an error), deep
            // enough to reach the decoder's recursion limit.
            let depth = *rng.pick(&[1usize, 50, 99, 101, 1000]);
            let num = 100 + rng.below(100) as u32;
            for _ in 0..depth {
                tag(num, 3, &mut b);
            }
            if rng.chance(50) {
                for _ in 0..depth {
                    tag(num, 4, &mut b);
                }
            }
            "nested groups"
        }
        78..=98 => {
            b = random_fields(rpc, rng);
            "random field values"
        }
        _ => {
            // Far above any payload limit (the signing service allows about twice the
            // configured 64 KiB; tonic refuses bigger messages itself).
            let big = pb::SignRawRequest {
                version: 0,
                key: "fz-es".into(),
                data: vec![b'x'; *rng.pick(&[70_000, 200_000, 1_100_000])],
                alg: String::new(),
            };
            b = big.encode_to_vec();
            "oversized"
        }
    };
    (name, b)
}

// ---------------------------------------------------------------------------------------------
// Running the cases.

struct Case {
    rpc: Rpc,
    path: String,
    mutation: &'static str,
    bytes: Vec<u8>,
}

/// What came back for one case.
struct Outcome {
    rpc: Rpc,
    mutation: &'static str,
    request: Vec<u8>,
    result: Result<Result<Vec<u8>, tonic::Status>, &'static str>,
    took: Duration,
}

async fn call(channel: tonic::transport::Channel, case: &Case) -> Outcome {
    let mut grpc = tonic::client::Grpc::new(channel);
    let path = match http::uri::PathAndQuery::try_from(case.path.as_str()) {
        Ok(p) => p,
        Err(_) => http::uri::PathAndQuery::from_static("/x/y"),
    };
    let started = Instant::now();
    let result = tokio::time::timeout(CALL_DEADLINE, async {
        grpc.ready()
            .await
            .map_err(|e| tonic::Status::unknown(format!("channel not ready: {e}")))?;
        grpc.unary(tonic::Request::new(case.bytes.clone()), path, RawCodec)
            .await
            .map(tonic::Response::into_inner)
    })
    .await
    .map_err(|_| "no answer by the deadline");
    Outcome {
        rpc: case.rpc,
        mutation: case.mutation,
        request: case.bytes.clone(),
        result,
        took: started.elapsed(),
    }
}

/// A signature to check independently: the JSON request for the Python verifier.
fn verification(
    o: &Outcome,
    jwks_by_kid: &BTreeMap<String, Value>,
) -> Result<Option<Value>, String> {
    let Ok(Ok(body)) = &o.result else {
        return Ok(None);
    };
    let jwk = |kid: &str| {
        jwks_by_kid
            .get(kid)
            .cloned()
            .ok_or_else(|| format!("{:?} signed with kid {kid}, which no listed key has", o.rpc))
    };
    match o.rpc {
        // Valid requests sign the digest of one known message: `cryptography` hashes it
        // itself. Another digest that signed cannot be checked here (the daemon verified it).
        Rpc::SignDigest => {
            let req =
                pb::SignDigestRequest::decode(o.request.as_slice()).map_err(|e| e.to_string())?;
            let resp = pb::SignRawResponse::decode(body.as_slice()).map_err(|e| e.to_string())?;
            if req.digest != Sha256::digest(DIGEST_MESSAGE).as_slice()
                && req.digest != Sha384::digest(DIGEST_MESSAGE).as_slice()
            {
                return Ok(None);
            }
            Ok(Some(json!({
                "op": "raw", "alg": resp.alg, "jwk": jwk(&resp.kid)?,
                "data_b64": b64(DIGEST_MESSAGE), "sig_b64": b64(&resp.signature),
            })))
        }
        Rpc::SignStream => {
            // One answer: a signature to check like its unary RPC's, or the item's refusal
            // with a code that RPC may answer.
            use pb::sign_stream_response::Result as Answer;
            let req =
                pb::SignStreamRequest::decode(o.request.as_slice()).map_err(|e| e.to_string())?;
            let resp =
                pb::SignStreamResponse::decode(body.as_slice()).map_err(|e| e.to_string())?;
            if resp.id != req.id {
                return Err(format!(
                    "SignStream: answer to id {} for id {}",
                    resp.id, req.id
                ));
            }
            match resp.result {
                Some(Answer::Jws(r)) => {
                    if r.signature.is_empty() || !r.compact.ends_with(&r.signature) {
                        return Err("SignStream: signature field is not the compact's".into());
                    }
                    Ok(Some(json!({
                        "op": "jws", "jws": r.compact, "jwks": {"keys": [jwk(&r.kid)?]},
                    })))
                }
                Some(Answer::Raw(r)) => {
                    let Some(pb::sign_stream_request::Request::Raw(raw)) = req.request else {
                        return Err("SignStream: a raw answer to a request that is not raw".into());
                    };
                    Ok(Some(json!({
                        "op": "raw", "alg": r.alg, "jwk": jwk(&r.kid)?,
                        "data_b64": b64(&raw.data), "sig_b64": b64(&r.signature),
                    })))
                }
                Some(Answer::Error(e)) if Rpc::SignJws.allowed(Code::from_i32(e.code)) => Ok(None),
                other => Err(format!("SignStream: unexpected answer {other:?}")),
            }
        }
        Rpc::SignRaw => {
            let req =
                pb::SignRawRequest::decode(o.request.as_slice()).map_err(|e| e.to_string())?;
            let resp = pb::SignRawResponse::decode(body.as_slice()).map_err(|e| e.to_string())?;
            Ok(Some(json!({
                "op": "raw", "alg": resp.alg, "jwk": jwk(&resp.kid)?,
                "data_b64": b64(&req.data), "sig_b64": b64(&resp.signature),
            })))
        }
        Rpc::SignTlsHandshake => {
            let req = pb::SignTlsHandshakeRequest::decode(o.request.as_slice())
                .map_err(|e| e.to_string())?;
            let resp = pb::SignRawResponse::decode(body.as_slice()).map_err(|e| e.to_string())?;
            Ok(Some(json!({
                "op": "raw", "alg": resp.alg, "jwk": jwk(&resp.kid)?,
                "data_b64": b64(&req.message), "sig_b64": b64(&resp.signature),
            })))
        }
        Rpc::SignJws
        | Rpc::SignIdToken
        | Rpc::SignRequestObject
        | Rpc::SignClientAssertion
        | Rpc::SignDpopProof
        | Rpc::SignAccessToken
        | Rpc::SignLogoutToken
        | Rpc::SignCibaRequest
        | Rpc::SignJarm
        | Rpc::SignIntrospection
        | Rpc::SignUserinfo => {
            let resp = pb::SignJwsResponse::decode(body.as_slice()).map_err(|e| e.to_string())?;
            if resp.signature.is_empty() || !resp.compact.ends_with(&resp.signature) {
                return Err(format!("{:?}: signature field is not the compact's", o.rpc));
            }
            Ok(Some(json!({
                "op": "jws", "jws": resp.compact, "jwks": {"keys": [jwk(&resp.kid)?]},
            })))
        }
        Rpc::SignHttpRequest | Rpc::SignHttpResponse => {
            // The raw signature over the signature base sigild reports, checked by the
            // independent verifier with the JOSE algorithm that makes the same signature.
            let resp =
                pb::SignHttpMessageResponse::decode(body.as_slice()).map_err(|e| e.to_string())?;
            let sig = resp
                .headers
                .iter()
                .find(|f| f.name == "Signature")
                .and_then(|f| f.value.split_once("=:"))
                .and_then(|(_, v)| v.strip_suffix(':'))
                .ok_or_else(|| format!("{:?}: no Signature field", o.rpc))?;
            let sig = base64::engine::general_purpose::STANDARD
                .decode(sig)
                .map_err(|e| e.to_string())?;
            let alg = match resp.alg.as_str() {
                "ecdsa-p256-sha256" => "ES256",
                "ed25519" => "EdDSA",
                "rsa-pss-sha512" => "PS512",
                other => return Err(format!("{:?}: unexpected alg {other}", o.rpc)),
            };
            Ok(Some(json!({
                "op": "raw", "alg": alg, "jwk": jwk(&resp.kid)?,
                "data_b64": b64(resp.signature_base.as_bytes()), "sig_b64": b64(&sig),
            })))
        }
        _ => Ok(None),
    }
}

/// An HTTP field for the message-signing requests.
fn field(name: &str, value: &str) -> pb::HttpField {
    pb::HttpField {
        name: name.to_owned(),
        value: value.to_owned(),
    }
}

/// Request fields as FAPI clients send them: sometimes Authorization, sometimes DPoP.
fn http_fields(rng: &mut Rng) -> Vec<pb::HttpField> {
    let mut f = vec![field("Content-Type", "application/json")];
    if rng.chance(50) {
        f.push(field("Authorization", "DPoP at-123"));
    }
    if rng.chance(50) {
        f.push(field("DPoP", "eyJ0eXAiOiJkcG9wK2p3dCJ9.e30.c2ln"));
    }
    f
}

/// Check many signatures in one Python process with the project's independent verifier.
fn verify_batch(requests: &[Value]) -> TestResult<usize> {
    use std::io::Write as _;
    let script = r#"
import json, sys
sys.path.insert(0, sys.argv[1])
import jose_verify as v
failed = []
reqs = json.load(sys.stdin)
for i, r in enumerate(reqs):
    try:
        (v.verify_jws if r["op"] == "jws" else v.verify_raw)(r)
    except Exception as e:
        failed.append({"index": i, "error": f"{type(e).__name__}: {e}"})
print(json.dumps({"checked": len(reqs), "failed": failed}))
"#;
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/verifiers");
    let mut child = std::process::Command::new("python3")
        .args(["-c", script, dir])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .ok_or("stdin")?
        .write_all(serde_json::to_string(requests)?.as_bytes())?;
    let out = child.wait_with_output()?;
    let v: Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("verifier: {e}: {}", String::from_utf8_lossy(&out.stderr)))?;
    let failed = v["failed"].as_array().cloned().unwrap_or_default();
    if !failed.is_empty() {
        let first = &failed[0];
        let idx = first["index"].as_u64().unwrap_or(0) as usize;
        return Err(format!(
            "{} of {} signatures failed independent verification; first: {} for {}",
            failed.len(),
            requests.len(),
            first["error"],
            requests.get(idx).cloned().unwrap_or_default()
        )
        .into());
    }
    Ok(v["checked"].as_u64().unwrap_or(0) as usize)
}

/// Malformed gRPC framing (not protobuf): these are answered by tonic before sigild's code
/// runs, with INTERNAL or OUT_OF_RANGE; the point is that each gets a status and the daemon
/// lives on.
async fn malformed_frames(d: &Daemon) -> TestResult<Vec<(String, Code)>> {
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;
    let body = pb::GetJwksRequest {}.encode_to_vec();
    let frame = |flag: u8, len: u32, body: &[u8]| {
        let mut f = vec![flag];
        f.extend(len.to_be_bytes());
        f.extend(body);
        f
    };
    let cases: Vec<(&str, Vec<u8>, Option<&str>)> = vec![
        ("compression flag 7", frame(7, 0, &[]), None),
        ("compressed without grpc-encoding", frame(1, 0, &[]), None),
        ("length beyond the body", frame(0, 100, &[0x0a, 0x01]), None),
        ("length 4 GiB", frame(0, u32::MAX, &body), None),
        ("half a frame header", vec![0, 0, 0], None),
        (
            "two messages in a unary call",
            [frame(0, 0, &[]), frame(0, 0, &[])].concat(),
            None,
        ),
        ("empty body", Vec::new(), None),
        ("unsupported grpc-encoding", frame(1, 3, b"abc"), Some("br")),
    ];
    let mut out = Vec::new();
    for (name, bytes, encoding) in cases {
        let mut req = http::Request::builder()
            .method("POST")
            .uri("/sigil.v1.KeyService/GetJwks")
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        if let Some(e) = encoding {
            req = req.header("grpc-encoding", e);
        }
        let req = req.body(tonic::body::Body::new(http_body_util::Full::new(
            Bytes::from(bytes),
        )))?;
        let channel = d.channel().await?;
        let resp = tokio::time::timeout(CALL_DEADLINE, async move {
            let resp = channel.oneshot(req).await?;
            let (parts, body) = resp.into_parts();
            if let Some(s) = tonic::Status::from_header_map(&parts.headers) {
                return Ok::<_, Box<dyn std::error::Error + Send + Sync>>(s.code());
            }
            let collected = body.collect().await?;
            let trailers = collected.trailers().cloned().unwrap_or_default();
            Ok(tonic::Status::from_header_map(&trailers)
                .map(|s| s.code())
                .unwrap_or(Code::Unknown))
        })
        .await
        .map_err(|_| format!("{name}: no answer by the deadline"))?
        .map_err(|e| format!("{name}: {e}"))?;
        out.push((name.to_owned(), resp));
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_survives_random_and_mutated_messages() -> TestResult {
    let cases_wanted: usize = std::env::var("SIGILD_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3000);
    let seed: u64 = std::env::var("SIGILD_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    eprintln!("grpc_fuzz: {cases_wanted} cases, SIGILD_FUZZ_SEED={seed}");

    let token = Token::new()?;
    let d = Daemon::start(&token)?;
    let mut kids = BTreeMap::new();
    for (name, alg) in SIGNING_KEYS {
        let bits = if alg.starts_with("PS") { 2048 } else { 0 };
        let key = d.create(name, alg, bits).await?;
        let v = key.versions.first().ok_or("no version")?;
        kids.insert(name.to_owned(), v.kid.clone());
    }
    let rng_keys = ring::rand::SystemRandom::new();
    let mut pkcs8 = Vec::new();
    for _ in 0..3 {
        let doc = ring::signature::EcdsaKeyPair::generate_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &rng_keys,
        )
        .map_err(|_| "ring P-256")?;
        pkcs8.push((doc.as_ref().to_vec(), "ES256"));
        let doc = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng_keys)
            .map_err(|_| "ring Ed25519")?;
        pkcs8.push((doc.as_ref().to_vec(), "EdDSA"));
    }
    let cert = rcgen::generate_simple_self_signed(vec!["fuzz.example".to_owned()])?;
    let enc = d.create(ENC_KEY.0, ENC_KEY.1, 0).await?;
    let enc_jwk = active_jwk(&enc)?;
    let plaintexts: Vec<Vec<u8>> = (0..6u8)
        .map(|i| format!("fuzz plaintext {i}").into_bytes())
        .collect();
    let items: Vec<Value> = plaintexts
        .iter()
        .zip(
            ["A256GCM", "A128GCM", "A128CBC-HS256", "A256CBC-HS512"]
                .iter()
                .cycle(),
        )
        .map(|(p, enc)| {
            json!({
                "op": "encrypt", "jwk": enc_jwk, "alg": ENC_KEY.1, "enc": enc,
                "plaintext_b64": b64(p), "header": {"kid": enc_jwk["kid"]},
            })
        })
        .collect();
    let made = python(&json!({"op": "encrypt_batch", "items": items}))?;
    let jwes: Vec<String> = serde_json::from_value(made["jwe"].clone())?;
    let fx = Fixtures {
        kids,
        pkcs8,
        cert_der: cert.cert.der().to_vec(),
        jwes: jwes.into_iter().zip(plaintexts).collect(),
    };

    // Generate every case up front from the seed.
    let mut rng = Rng(seed);
    let cases: Vec<Case> = (0..cases_wanted)
        .map(|_| {
            let rpc = *rng.pick(&RPCS);
            let valid = valid_request(rpc, &mut rng, &fx);
            let (mutation, bytes) = mutate(rpc, valid, &mut rng);
            Case {
                rpc,
                path: rpc.path(&mut rng),
                mutation,
                bytes,
            }
        })
        .collect();

    // Four callers, each on its own connection, take cases from one queue.
    let started = Instant::now();
    let cases = Arc::new(cases);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let outcomes = Arc::new(Mutex::new(Vec::with_capacity(cases_wanted)));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let channel = d.channel().await?;
        let (cases, next, outcomes) =
            (Arc::clone(&cases), Arc::clone(&next), Arc::clone(&outcomes));
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(case) = cases.get(i) else { break };
                let o = call(channel.clone(), case).await;
                outcomes.lock().map_err(|_| "lock")?.push(o);
            }
            Ok::<_, &'static str>(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    let elapsed = started.elapsed();
    let outcomes = std::mem::take(&mut *outcomes.lock().map_err(|_| "lock")?);

    // Every call answered, with an expected status.
    let mut by_status: BTreeMap<String, usize> = BTreeMap::new();
    let mut by_rpc: BTreeMap<(Rpc, String), usize> = BTreeMap::new();
    let mut by_mutation: BTreeMap<(&str, String), usize> = BTreeMap::new();
    let mut problems = Vec::new();
    for o in &outcomes {
        let code = match &o.result {
            Err(hang) => {
                problems.push(format!("{:?} ({}): {hang}", o.rpc, o.mutation));
                continue;
            }
            Ok(Ok(_)) => Code::Ok,
            Ok(Err(s)) => s.code(),
        };
        let name = format!("{code:?}");
        *by_status.entry(name.clone()).or_default() += 1;
        *by_rpc.entry((o.rpc, name.clone())).or_default() += 1;
        *by_mutation.entry((o.mutation, name)).or_default() += 1;
        let decodes = o.rpc.decodes(&o.request);
        let message = match &o.result {
            Ok(Err(s)) => s.message().to_owned(),
            _ => String::new(),
        };
        let ok = if o.request.len() > 4 * 1024 * 1024
            || (o.request.len() > 128 * 1024 && o.rpc <= Rpc::SignDigest)
            || (o.request.len() > 2 * 1024 * 1024 && o.rpc == Rpc::DecryptJwe)
        {
            // Beyond the decoding limit tonic refuses the message before decoding it.
            code == Code::OutOfRange || (decodes && o.rpc.allowed(code))
        } else if !decodes {
            // Not a message of the request type: tonic's decoder answers INTERNAL, and that
            // is the only code it may get (sigild's code never sees the request).
            code == Code::Internal && message.contains("failed to decode Protobuf message")
                || o.rpc == Rpc::Unknown && code == Code::Unimplemented
                // A stream ends with INVALID_ARGUMENT for a frame it cannot decode.
                || o.rpc == Rpc::SignStream
                    && code == Code::InvalidArgument
                    && message.contains("failed to decode Protobuf message")
        } else {
            o.rpc.allowed(code)
        };
        if !ok {
            problems.push(format!(
                "{:?} ({}): unexpected {code:?} \"{message}\" for {} bytes",
                o.rpc,
                o.mutation,
                o.request.len()
            ));
        }
    }

    // Every OK decryption is of a JWE jwcrypto made, with exactly its plaintext; every
    // refused one of the encryption key that is not the caller's own mistake is the one
    // uniform answer.
    let mut decrypted = 0;
    for o in &outcomes {
        if o.rpc != Rpc::DecryptJwe {
            continue;
        }
        let Ok(req) = pb::DecryptJweRequest::decode(o.request.as_slice()) else {
            continue;
        };
        match &o.result {
            Ok(Ok(body)) => {
                let resp = pb::DecryptJweResponse::decode(body.as_slice())?;
                let expected = fx
                    .jwes
                    .iter()
                    .find(|(j, _)| j.as_bytes() == req.jwe.as_slice());
                match expected {
                    Some((_, p)) if *p == resp.plaintext => decrypted += 1,
                    _ => problems.push(format!(
                        "DecryptJwe ({}): OK with a plaintext that is not the fixture's",
                        o.mutation
                    )),
                }
            }
            Ok(Err(s)) if s.code() == Code::InvalidArgument && req.key == ENC_KEY.0 => {
                let m = s.message();
                if !m.starts_with("the JWE cannot be decrypted with this key (request id ")
                    && !m.starts_with("allowed_algs: unknown name")
                    && !m.starts_with("allowed_encs: unknown name")
                {
                    problems.push(format!("DecryptJwe ({}): told {m:?}", o.mutation));
                }
            }
            _ => {}
        }
    }
    eprintln!("grpc_fuzz: {decrypted} decryptions checked against their plaintexts");
    assert!(decrypted > 0, "no decryption succeeded");

    let frames = malformed_frames(&d).await?;

    eprintln!(
        "grpc_fuzz: {} calls in {:.1} s ({:.0}/s)",
        outcomes.len(),
        elapsed.as_secs_f64(),
        outcomes.len() as f64 / elapsed.as_secs_f64().max(0.001)
    );
    eprintln!("grpc_fuzz: by status: {by_status:?}");
    let mut time_by_rpc: BTreeMap<Rpc, (usize, Duration)> = BTreeMap::new();
    for o in &outcomes {
        let e = time_by_rpc.entry(o.rpc).or_default();
        e.0 += 1;
        e.1 += o.took;
    }
    for (rpc, (n, total)) in &time_by_rpc {
        eprintln!(
            "grpc_fuzz: {rpc:?}: {n} calls, {:.1} ms each on average",
            total.as_secs_f64() * 1000.0 / (*n).max(1) as f64
        );
    }
    for ((rpc, code), n) in &by_rpc {
        eprintln!("grpc_fuzz:   {rpc:?} {code}: {n}");
    }
    for ((m, code), n) in &by_mutation {
        eprintln!("grpc_fuzz:   [{m}] {code}: {n}");
    }
    eprintln!("grpc_fuzz: malformed frames: {frames:?}");
    assert_eq!(outcomes.len(), cases_wanted, "every case ran");
    assert!(
        problems.is_empty(),
        "{} problems, e.g.:\n{}",
        problems.len(),
        problems
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    for (name, code) in &frames {
        // tonic reads the first message of a unary call and ignores a second one.
        let second_ignored = name.starts_with("two messages") && *code == Code::Ok;
        assert!(
            second_ignored
                || matches!(
                    code,
                    Code::Internal | Code::OutOfRange | Code::Unimplemented
                ),
            "malformed frame {name}: {code:?}"
        );
    }
    // The mutations reached the daemon's own code, not only tonic's decoder.
    for code in ["Ok", "InvalidArgument", "NotFound", "Internal"] {
        assert!(
            by_status.get(code).copied().unwrap_or(0) > 0,
            "no {code} at all: {by_status:?}"
        );
    }

    // Every OK signature verifies independently, against the public keys the daemon lists.
    // A version that signed may since have been destroyed by an admin call, so the keys come
    // from every key the daemon described during the run as well as from the final list.
    let mut keys = list_keys(&d).await?;
    for o in &outcomes {
        let Ok(Ok(body)) = &o.result else { continue };
        match o.rpc {
            Rpc::CreateKey
            | Rpc::ImportKey
            | Rpc::AdoptKey
            | Rpc::GetKey
            | Rpc::RotateKey
            | Rpc::ActivateKeyVersion
            | Rpc::RetireKeyVersion
            | Rpc::DestroyKeyVersion => keys.push(pb::Key::decode(body.as_slice())?),
            Rpc::ListKeys => keys.extend(pb::ListKeysResponse::decode(body.as_slice())?.keys),
            _ => {}
        }
    }
    let mut jwks_by_kid = BTreeMap::new();
    for key in &keys {
        for v in &key.versions {
            if let Ok(jwk) = serde_json::from_str::<Value>(&v.public_jwk_json) {
                jwks_by_kid.insert(v.kid.clone(), jwk);
            }
        }
    }
    let mut checks = Vec::new();
    for o in &outcomes {
        if let Some(req) = verification(o, &jwks_by_kid)? {
            checks.push(req);
        }
    }
    let verified = verify_batch(&checks)?;
    eprintln!("grpc_fuzz: {verified} signatures verified independently");
    assert!(verified >= 50, "too few signatures to speak of: {verified}");

    // The same process still serves: health, and a correct signature from an untouched key
    // and from a key created now.
    wait_health(&d, "", ServingStatus::Serving, Duration::from_secs(10)).await?;
    sign_verified(&d, "fz-es", "ES256").await?;
    d.create("after-fuzz", "ES256", 0).await?;
    sign_verified(&d, "after-fuzz", "ES256").await?;
    let log = d.log_text();
    assert!(!log.contains("panicked"), "the daemon panicked:\n{log}");
    Ok(())
}
