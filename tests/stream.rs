//! `SignStream` against a live daemon: many requests in flight on one stream, each signed,
//! verified by jwcrypto / cryptography, refused or failed on its own with the code its unary
//! RPC would answer, and audited with its own record; the stream's own rules (an item without
//! a request, a duplicate id in flight, a frame that does not decode or is too large) end only
//! that item or that stream; a caller that goes away mid-stream and a shutdown with a stream
//! open are handled without a hang.

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sigild::api::pb;
use sigild::api::pb::sign_stream_request::Request as Item;
use sigild::client::Signed;
use support::stream::{ManualStream, pipeline_as, raw_stream};
use support::*;
use tonic::Code;

/// A relying party: generic JWS on `es-*` keys only.
const RP: &str = "spiffe://sigild.test/rp";

fn rules() -> String {
    format!(
        "[[caller]]\nidentity = \"{RP}\"\nkeys = [\"es-*\"]\noperations = [\"jws\"]\n\n[audit]\nstdout = true\n"
    )
}

fn jws_item(key: &str, alg: &str, sub: &str) -> Item {
    Item::Jws(pb::SignJwsRequest {
        key: key.into(),
        protected_header: format!("{{\"alg\":\"{alg}\",\"typ\":\"JWT\"}}").into_bytes(),
        payload: json!({"sub": sub}).to_string().into_bytes(),
        version: 0,
    })
}

fn raw_item(key: &str, data: &[u8]) -> Item {
    Item::Raw(pb::SignRawRequest {
        key: key.into(),
        data: data.to_vec(),
        alg: String::new(),
        version: 0,
    })
}

/// The code and message of a failed answer.
fn refused(r: Result<(String, Signed), sigild::client::ClientError>) -> TestResult<(Code, String)> {
    match r {
        Ok(v) => Err(format!("expected an error answer, got {v:?}").into()),
        Err(e) => Ok((
            e.code().ok_or(format!("not a daemon answer: {e}"))?,
            e.to_string(),
        )),
    }
}

#[tokio::test]
async fn each_item_is_signed_verified_refused_and_audited_on_its_own() -> TestResult {
    let token = Token::new()?;
    let d = Daemon::start_with(&token, &rules())?;
    let es = d.create("es-a", "ES256", 0).await?;
    let ps = d.create("ps-a", "PS256", 2048).await?;
    let admin = pipeline_as(&d, &token.pki.admin, 16).await?;

    // Many in flight at once (more than the window: submit waits for room), answered by id.
    let mut pending = Vec::new();
    for i in 0..40 {
        pending.push(
            admin
                .submit(jws_item("es-a", "ES256", &format!("user-{i}")))
                .await?,
        );
    }
    let raw_data = b"raw input through the stream".to_vec();
    let raw = admin.submit(raw_item("ps-a", &raw_data)).await?;
    let id_token = admin
        .submit(Item::IdToken(pb::SignIdTokenRequest {
            key: "es-a".into(),
            claims_json: json!({"iss": "https://op.example.com", "sub": "alice", "aud": "rp"})
                .to_string(),
            lifetime_seconds: 60,
            ..Default::default()
        }))
        .await?;
    let dpop = admin
        .submit(Item::DpopProof(pb::SignDpopProofRequest {
            key: "es-a".into(),
            htm: "POST".into(),
            htu: "https://as.example.com/token".into(),
            ..Default::default()
        }))
        .await?;
    // Failures of single items.
    let missing = admin.submit(jws_item("no-such-key", "ES256", "x")).await?;
    let bad_header = admin
        .submit(Item::Jws(pb::SignJwsRequest {
            key: "es-a".into(),
            protected_header: b"not json".to_vec(),
            payload: b"{}".to_vec(),
            version: 0,
        }))
        .await?;
    let too_large = admin
        .submit(raw_item("es-a", &vec![7u8; 64 * 1024 + 1]))
        .await?;
    let after = admin
        .submit(jws_item("es-a", "ES256", "after-failures"))
        .await?;

    let mut batch = JwsBatch::default();
    let mut ok_ids = Vec::new();
    for (i, p) in pending.into_iter().enumerate() {
        let (rid, signed) = p.with_request_id().await?;
        let Signed::Jws(r) = signed else {
            return Err("a raw answer to a JWS request".into());
        };
        let (_, payload) = batch.push(&r.compact, &r.kid)?;
        assert_eq!(payload["sub"], format!("user-{i}"), "answers matched by id");
        ok_ids.push(rid);
    }
    for p in [id_token, dpop, after] {
        let (rid, signed) = p.with_request_id().await?;
        let Signed::Jws(r) = signed else {
            return Err("a raw answer to a JWS request".into());
        };
        batch.push(&r.compact, &r.kid)?;
        ok_ids.push(rid);
    }
    assert_eq!(batch.verify(&d.jwks().await?)?, 43);
    let (rid, signed) = raw.with_request_id().await?;
    let Signed::Raw(r) = signed else {
        return Err("a JWS answer to a raw request".into());
    };
    verify_raw("PS256", &active_jwk(&ps)?, &raw_data, &r.signature)?;
    ok_ids.push(rid);
    assert_eq!(refused(missing.with_request_id().await)?.0, Code::NotFound);
    let (code, message) = refused(bad_header.with_request_id().await)?;
    assert_eq!(code, Code::InvalidArgument, "{message}");
    let (code, message) = refused(too_large.with_request_id().await)?;
    assert_eq!(code, Code::InvalidArgument, "{message}");

    // Policy per item: the RP's refused requests fail alone, on a stream that goes on.
    let rp = token.pki.caller("rp")?;
    let rp_stream = pipeline_as(&d, &rp, 8).await?;
    let allowed = rp_stream.submit(jws_item("es-a", "ES256", "rp-1")).await?;
    let not_raw = rp_stream.submit(raw_item("es-a", b"raw")).await?;
    let not_key = rp_stream.submit(jws_item("ps-a", "PS256", "rp-2")).await?;
    let allowed_too = rp_stream.submit(jws_item("es-a", "ES256", "rp-3")).await?;
    let (code, _) = refused(not_raw.with_request_id().await)?;
    assert_eq!(code, Code::PermissionDenied);
    let (code, _) = refused(not_key.with_request_id().await)?;
    assert_eq!(code, Code::PermissionDenied);
    let mut rp_batch = JwsBatch::default();
    let mut rp_ids = Vec::new();
    for p in [allowed, allowed_too] {
        let (rid, signed) = p.with_request_id().await?;
        let Signed::Jws(r) = signed else {
            return Err("a raw answer to a JWS request".into());
        };
        rp_batch.push(&r.compact, &r.kid)?;
        rp_ids.push(rid);
    }
    rp_batch.verify(&d.jwks().await?)?;

    // Every item has its own audit record under the request id its answer carries.
    let records = audit_until(&d, |rs| {
        ok_ids
            .iter()
            .chain(&rp_ids)
            .all(|id| rs.iter().any(|r| r["request_id"] == json!(id)))
            && rs.iter().filter(|r| r["decision"] == "deny").count() >= 2
    })
    .await?;
    let of = |id: &str| -> TestResult<Value> {
        let mut matching = records.iter().filter(|r| r["request_id"] == json!(id));
        let r = matching.next().ok_or("no record")?.clone();
        assert!(matching.next().is_none(), "one record per item: {id}");
        Ok(r)
    };
    for id in &ok_ids {
        assert_eq!(of(id)?["outcome"], "ok", "{id}");
    }
    for id in &rp_ids {
        let r = of(id)?;
        assert_eq!(
            (&r["caller"], &r["operation"]),
            (&json!(RP), &json!("jws")),
            "{r}"
        );
    }
    let denied: Vec<&Value> = records
        .iter()
        .filter(|r| r["decision"] == "deny" && r["caller"] == json!(RP))
        .collect();
    assert_eq!(denied.len(), 2, "{denied:?}");
    assert!(denied.iter().any(|r| r["operation"] == "raw"), "{denied:?}");
    assert!(denied.iter().any(|r| r["key"] == "ps-a"), "{denied:?}");
    let _ = es;
    Ok(())
}

#[tokio::test]
async fn protocol_errors_end_only_their_item_or_their_stream() -> TestResult {
    let token = Token::new()?;
    let d = Daemon::start(&token)?;
    d.create("ps-a", "PS256", 2048).await?;
    d.create("es-a", "ES256", 0).await?;

    // An item without a request fails alone; the next one signs.
    let mut s = ManualStream::open(&d).await?;
    s.tx.send(pb::SignStreamRequest {
        id: 1,
        request: None,
    })
    .await?;
    s.tx.send(pb::SignStreamRequest {
        id: 2,
        request: Some(jws_item("es-a", "ES256", "a")),
    })
    .await?;
    let mut answers = [
        s.next().await?.ok_or("ended")?,
        s.next().await?.ok_or("ended")?,
    ];
    answers.sort_by_key(|a| a.id);
    match &answers[0].result {
        Some(pb::sign_stream_response::Result::Error(e)) => {
            assert_eq!(e.code, Code::InvalidArgument as i32, "{e:?}")
        }
        other => return Err(format!("item 1: {other:?}").into()),
    }
    assert!(
        matches!(
            answers[1].result,
            Some(pb::sign_stream_response::Result::Jws(_))
        ),
        "{:?}",
        answers[1]
    );
    // A duplicate id while the first is in flight (RSA signatures take a while on SoftHSM):
    // the first is still answered, then the stream ends INVALID_ARGUMENT.
    let raw = |id| pb::SignStreamRequest {
        id,
        request: Some(raw_item("ps-a", b"slow")),
    };
    s.tx.send(raw(7)).await?;
    s.tx.send(raw(7)).await?;
    let first = s.next().await?.ok_or("ended before answering 7")?;
    assert_eq!(first.id, 7);
    assert!(
        matches!(first.result, Some(pb::sign_stream_response::Result::Raw(_))),
        "{first:?}"
    );
    let end = s
        .next()
        .await
        .err()
        .ok_or("the stream went on after a duplicate id")?;
    assert_eq!(end.code(), Code::InvalidArgument, "{end:?}");
    assert!(end.message().contains("already in flight"), "{end:?}");

    // Bytes that are not a SignStreamRequest end the stream INVALID_ARGUMENT.
    let (answers, end) = raw_stream(&d, vec![vec![0xff, 0xff, 0xff, 0x0f, 0x01]]).await?;
    assert!(answers.is_empty());
    assert_eq!(end.code(), Code::InvalidArgument, "{end:?}");
    // A frame over the size limit ends the stream (tonic's OUT_OF_RANGE), after the items
    // before it are answered.
    let good = prost::Message::encode_to_vec(&pb::SignStreamRequest {
        id: 1,
        request: Some(jws_item("es-a", "ES256", "b")),
    });
    let huge = prost::Message::encode_to_vec(&pb::SignStreamRequest {
        id: 2,
        request: Some(raw_item("es-a", &vec![0u8; 512 * 1024])),
    });
    let (answers, end) = raw_stream(&d, vec![good, huge]).await?;
    assert_eq!(answers.len(), 1, "the good item is answered");
    assert_eq!(end.code(), Code::OutOfRange, "{end:?}");

    // The daemon is unharmed.
    sign_verified(&d, "es-a", "ES256").await?;
    assert!(!d.log_text().contains("panic"), "{}", d.log_text());
    Ok(())
}

// Two runtime threads: the daemon is waited for on this one while the stream's tasks go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_going_away_and_a_shutdown_end_streams_cleanly() -> TestResult {
    let token = Token::new()?;
    // A long grace period: a stream left open must not hold the shutdown for it.
    let config =
        token
            .config("")
            .replacen("[server]\n", "[server]\nshutdown_grace_seconds = 60\n", 1);
    let path = token.write_config("stream.toml", &config)?;
    let mut d = Daemon::start_config(&token.conf, &path)?;
    d.create("es-a", "ES256", 0).await?;

    // A caller that sends a burst and goes away without reading.
    {
        let mut s = ManualStream::open(&d).await?;
        for id in 0..100 {
            s.tx.send(pb::SignStreamRequest {
                id,
                request: Some(jws_item("es-a", "ES256", "gone")),
            })
            .await?;
        }
        let _ = s.next().await?;
    }
    sign_verified(&d, "es-a", "ES256").await?;

    // A stream left open at shutdown: ended UNAVAILABLE, and the daemon exits well within
    // the grace period.
    let open = pipeline_as(&d, &token.pki.admin, 8).await?;
    open.submit(jws_item("es-a", "ES256", "before"))
        .await?
        .signed()
        .await?;
    let t = Instant::now();
    let status = d.signal_and_wait("TERM", Duration::from_secs(30))?;
    assert!(status.success(), "{status:?}\n{}", d.log_text());
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "shutdown took {:?}",
        t.elapsed()
    );
    let after = open.submit(jws_item("es-a", "ES256", "after")).await;
    let code = match after {
        Err(e) => e.code(),
        Ok(p) => p.signed().await.err().and_then(|e| e.code()),
    };
    assert_eq!(code, Some(Code::Unavailable));
    assert!(!d.log_text().contains("panic"), "{}", d.log_text());
    Ok(())
}
