//! Property tests of policy evaluation, the key-name glob, claim extraction and rate limits.
//!
//! The model they check (read from `evaluate`): rules only ever allow — there are no deny
//! rules — so a request is allowed exactly when some rule that names the caller covers the
//! operation and key (and, when claims are given, one of those rules also accepts them). From
//! that: a caller no rule names is always refused as unknown; adding rules never turns an
//! allowed request into a refusal; rules naming other callers never change a decision;
//! content rules only narrow; in-process callers are never subject to policy.

use std::time::Duration;

use proptest::prelude::*;

use super::*;

/// Reference glob: `*` matches any run of bytes, everything else itself (plain recursion).
fn glob_model(p: &[u8], s: &[u8]) -> bool {
    match p.split_first() {
        None => s.is_empty(),
        Some((b'*', rest)) => {
            (0..=s.len()).any(|i| glob_model(rest, s.get(i..).unwrap_or_default()))
        }
        Some((c, rest)) => s
            .split_first()
            .is_some_and(|(d, srest)| c == d && glob_model(rest, srest)),
    }
}

fn caller() -> impl Strategy<Value = Caller> {
    prop_oneof![
        proptest::sample::select(vec!["spiffe://a", "spiffe://b", "uid:0", "c"])
            .prop_map(Caller::tls),
        (0u32..3, 0u32..3).prop_map(|(u, g)| Caller::unix(u, g)),
        Just(Caller::plaintext()),
    ]
}

fn who() -> impl Strategy<Value = Who> {
    prop_oneof![
        proptest::sample::select(vec!["spiffe://a", "spiffe://b", "uid:0", "c"])
            .prop_map(|s| Who::Identity(s.to_owned())),
        (0u32..3).prop_map(Who::Uid),
        (0u32..3).prop_map(Who::Gid),
        Just(Who::Plaintext),
    ]
}

fn operation() -> impl Strategy<Value = Operation> {
    proptest::sample::select(vec![
        Operation::Sign(TokenType::Jws),
        Operation::Sign(TokenType::Raw),
        Operation::Sign(TokenType::IdToken),
        Operation::Sign(TokenType::Jar),
        Operation::Sign(TokenType::ClientAssertion),
        Operation::Sign(TokenType::Dpop),
        Operation::Sign(TokenType::Tls),
        Operation::Decrypt,
        Operation::Admin,
        Operation::Read,
    ])
}

fn pattern() -> impl Strategy<Value = String> {
    "[ab*]{0,4}|\\*|idp-\\*"
}

fn key() -> impl Strategy<Value = String> {
    "[ab]{0,4}|idp-[a-z]{0,3}"
}

fn allowed_values() -> impl Strategy<Value = Option<Vec<String>>> {
    proptest::option::of(prop::collection::vec(
        proptest::sample::select(vec!["x", "y", "https://a/"]).prop_map(str::to_owned),
        0..3,
    ))
}

fn rule() -> impl Strategy<Value = Rule> {
    (
        proptest::option::of(who()),
        prop::collection::vec(pattern().prop_map(KeyPattern::new), 0..3),
        prop::collection::btree_set(
            proptest::sample::select(Operation::CONFIGURABLE.to_vec()),
            0..4,
        ),
        any::<bool>(),
        (
            allowed_values(),
            allowed_values(),
            allowed_values(),
            allowed_values(),
        ),
    )
        .prop_map(
            |(who, keys, operations, admin, (iss, aud, client_id, htu_prefix))| Rule {
                who,
                keys,
                operations,
                admin,
                iss,
                aud,
                client_id,
                htu_prefix,
                target_uri_prefix: None,
                jws_typs: None,
                jwe_algs: None,
                jwe_encs: None,
                rate: None,
            },
        )
}

fn claims() -> impl Strategy<Value = Option<Claims>> {
    let v = || {
        proptest::option::of(
            proptest::sample::select(vec!["x", "y", "z", "https://a/b"]).prop_map(str::to_owned),
        )
    };
    proptest::option::of(
        (
            v(),
            prop::collection::vec(
                proptest::sample::select(vec!["x", "y", "z"]).prop_map(str::to_owned),
                0..3,
            ),
            v(),
            v(),
        )
            .prop_map(|(iss, aud, client_id, htu)| Claims {
                iss,
                aud,
                sub: None,
                client_id,
                htu,
                target_uri: None,
                jti: None,
            }),
    )
}

/// The model of "rule `r` names caller `c`", written from the documentation of [`Who`].
fn names(r: &Rule, c: &Caller) -> bool {
    match (&r.who, &c.via) {
        (Some(Who::Identity(i)), Via::Tls) => *i == c.identity,
        (Some(Who::Uid(u)), Via::Unix { uid, .. }) => u == uid,
        (Some(Who::Gid(g)), Via::Unix { gid, .. }) => g == gid,
        (Some(Who::Plaintext), Via::DangerPlaintext) => true,
        _ => false,
    }
}

/// The model of "rule `r` covers `op` on `key`" (raw and tls are one permission).
fn covers(r: &Rule, op: Operation, key: &str) -> bool {
    let op_ok = match op {
        Operation::Admin => r.admin,
        Operation::Read => true,
        Operation::Sign(TokenType::Raw) | Operation::Sign(TokenType::Tls) => {
            r.operations.contains(&Operation::Sign(TokenType::Raw))
                || r.operations.contains(&Operation::Sign(TokenType::Tls))
        }
        other => r.operations.contains(&other),
    };
    op_ok
        && (op == Operation::Read
            || r.keys
                .iter()
                .any(|p| glob_model(p.0.as_bytes(), key.as_bytes())))
}

proptest! {
    #[test]
    fn glob_matches_the_reference(p in "[ab*]{0,6}", s in "[ab]{0,8}") {
        prop_assert_eq!(KeyPattern::new(p.clone()).matches(&s), glob_model(p.as_bytes(), s.as_bytes()));
    }

    #[test]
    fn glob_never_panics_and_knows_literals(p in ".{0,10}", s in ".{0,10}") {
        let m = KeyPattern::new(p.clone()).matches(&s);
        if !p.contains('*') {
            prop_assert_eq!(m, p == s);
        }
        prop_assert!(KeyPattern::new("*").matches(&s));
        let prefix: String = p.chars().filter(|c| *c != '*').collect();
        prop_assert_eq!(KeyPattern::new(format!("{prefix}*")).matches(&s), s.starts_with(&prefix));
    }

    /// Operation and key only (the early check): allowed exactly when a rule naming the caller
    /// covers them; a caller no rule names is refused as unknown.
    #[test]
    fn decision_without_claims_follows_the_model(
        rules in prop::collection::vec(rule(), 0..5),
        c in caller(),
        op in operation(),
        k in key(),
    ) {
        let policy = Policy::new(rules.clone(), None);
        let got = policy.evaluate(&c, &Request { op, key: &k, claims: None, typ: None });
        let mine: Vec<&Rule> = rules.iter().filter(|r| names(r, &c)).collect();
        if mine.is_empty() {
            prop_assert!(
                matches!(&got, Err(PolicyError::UnknownCaller { caller }) if *caller == c.identity),
                "{:?}", got
            );
        } else if mine.iter().any(|r| covers(r, op, &k)) {
            let first = rules.iter().position(|r| names(r, &c) && covers(r, op, &k));
            prop_assert_eq!(got, Ok(Grant(first)));
        } else {
            prop_assert!(matches!(got, Err(PolicyError::OperationNotAllowed { .. })), "{:?}", got);
        }
    }

    /// Allow-only rules: adding any rule never turns an allowed request into a refusal, and
    /// rules that name other callers never change the decision at all.
    #[test]
    fn more_rules_never_deny_and_others_rules_do_not_matter(
        rules in prop::collection::vec(rule(), 0..4),
        extra in prop::collection::vec(rule(), 0..3),
        c in caller(),
        op in operation(),
        k in key(),
        cl in claims(),
    ) {
        let with_claims = Some(&cl);
        let req = Request { op, key: &k, claims: with_claims, typ: None };
        let before = Policy::new(rules.clone(), None).evaluate(&c, &req);
        let mut more = rules.clone();
        more.extend(extra.iter().cloned());
        let after = Policy::new(more, None).evaluate(&c, &req);
        if before.is_ok() {
            prop_assert!(after.is_ok(), "{:?}", after);
        }
        let mut others = rules.clone();
        others.extend(extra.into_iter().filter(|r| !names(r, &c)));
        let with_others = Policy::new(others, None).evaluate(&c, &req);
        prop_assert_eq!(with_others, before);
    }

    /// Content rules only narrow: what is allowed with claims is allowed without them, and the
    /// daemon itself is never subject to policy.
    #[test]
    fn claims_only_narrow(
        rules in prop::collection::vec(rule(), 0..5),
        c in caller(),
        op in operation(),
        k in key(),
        cl in claims(),
    ) {
        let policy = Policy::new(rules, None);
        let with = policy.evaluate(&c, &Request { op, key: &k, claims: Some(&cl), typ: None });
        let without = policy.evaluate(&c, &Request { op, key: &k, claims: None, typ: None });
        if with.is_ok() {
            prop_assert!(without.is_ok());
        }
        let daemon = policy.evaluate(&Caller::in_process(), &Request { op, key: &k, claims: Some(&cl), typ: None });
        prop_assert_eq!(daemon, Ok(Grant(None)));
    }

    #[test]
    fn claims_from_any_payload(op in operation(), payload in prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64),
        r#"\{("(iss|aud|sub|client_id|htu|jti)":("[a-z]{0,3}"|\[("[a-z]"|1|null),?\]|1|null),?){0,4}\}"#
            .prop_map(String::into_bytes),
    ]) {
        if let Some(claims) = Claims::from_payload(op, &payload) {
            let v: serde_json::Value = serde_json::from_slice(&payload).unwrap_or_default();
            prop_assert!(v.is_object());
            if let Some(aud) = v.get("aud").and_then(|a| a.as_str()) {
                prop_assert_eq!(claims.aud, vec![aud.to_owned()]);
            }
            let id = if op == Operation::Sign(TokenType::ClientAssertion) { "sub" } else { "client_id" };
            prop_assert_eq!(claims.client_id.as_deref(), v.get(id).and_then(|x| x.as_str()));
        }
    }

    #[test]
    fn rates_round_trip(count in 1u32.., unit in proptest::sample::select(vec!["s", "m", "h"]), junk in ".{0,12}") {
        let r = Rate::parse(&format!("{count}/{unit}"));
        prop_assert!(r.is_ok());
        let r = r.unwrap_or(Rate { count: 1, period: Duration::from_secs(1) });
        prop_assert_eq!(r.count, count);
        prop_assert_eq!(Rate::parse(&r.to_string()), Ok(r));
        if let Ok(j) = Rate::parse(&junk) {
            prop_assert!(j.count >= 1);
        }
    }

    /// A full bucket of `n` at one instant admits exactly `n` requests, whoever asks.
    #[test]
    fn a_bucket_admits_exactly_its_count(n in 1u32..40, unit in proptest::sample::select(vec!["s", "m", "h"]), at in 0u64..1_000_000) {
        let rate = Rate::parse(&format!("{n}/{unit}")).ok();
        let policy = Policy::new(Vec::new(), rate);
        let now = Duration::from_millis(at);
        let c = Caller::plaintext();
        let admitted = (0..n + 5).filter(|_| policy.admit(&c, Grant(None), "k", now).is_ok()).count();
        prop_assert_eq!(admitted, n as usize);
    }
}
