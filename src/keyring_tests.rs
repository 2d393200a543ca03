//! Keyring logic over the in-memory backend ([`crate::backend::memory`]): rotation ordering,
//! crash points between device calls, and reloading from the records. Fast: no device, no
//! daemon. What real devices do is the conformance suite's (tests/conformance.rs).

use std::sync::Arc;

use super::*;
use crate::backend::memory::MemoryBackend;
use crate::jose::JweAlg;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const NOW: i64 = 1_700_000_000;

fn keyring(backend: &MemoryBackend) -> Keyring {
    Keyring::new(Arc::new(backend.clone()))
}

/// A second process (a restart, or a replica) over the same device.
async fn reloaded(backend: &MemoryBackend) -> Result<Keyring, KeyringError> {
    let k = keyring(backend);
    k.refresh().await?;
    Ok(k)
}

/// The keyring as its records describe it. A destroyed version's record holds no public key, so
/// a reloaded keyring cannot know its kid, URI or kind, while the process that destroyed it
/// still shows them: for destroyed versions only the recorded fields are compared.
fn as_recorded(keys: &[KeyInfo]) -> Vec<(KeyName, bool, Vec<VersionInfo>)> {
    keys.iter()
        .map(|k| {
            let versions = k
                .versions
                .iter()
                .map(|v| {
                    let mut v = VersionInfo::clone(v);
                    if v.state == KeyState::Destroyed {
                        v.kind = KeyKind::Ed25519;
                        v.public = PublicKey::Ed25519 { x: Vec::new() };
                        v.kid = String::new();
                        v.uri = String::new();
                        v.attestation = Vec::new();
                    }
                    v
                })
                .collect();
            (k.name.clone(), k.fapi2, versions)
        })
        .collect()
}

fn states(key: &KeyInfo) -> Vec<KeyState> {
    key.versions.iter().map(|v| v.state).collect()
}

fn jwks_kids(k: &Keyring) -> Result<Vec<String>, KeyringError> {
    Ok(k.jwks()?["keys"]
        .as_array()
        .map(|keys| {
            keys.iter()
                .filter_map(|e| e["kid"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default())
}

/// Every rule that must hold after any operation: at most one active version, kids distinct
/// among the versions that have key pairs, the JWKS = the published versions, and `active()`
/// = the one active version.
fn assert_invariants(k: &Keyring) -> TestResult {
    let mut all_kids = Vec::new();
    for key in k.list()? {
        let active: Vec<_> = key
            .versions
            .iter()
            .filter(|v| v.state == KeyState::Active)
            .collect();
        assert!(active.len() <= 1, "{}: {:?}", key.name, states(&key));
        match active.first() {
            Some(v) => assert_eq!(k.active(key.name.as_str())?.version, v.version),
            None => assert!(k.active(key.name.as_str()).is_err()),
        }
        for (i, v) in key.versions.iter().enumerate() {
            assert_eq!(v.version as usize, i + 1, "{}: versions in order", key.name);
        }
        all_kids.extend(
            key.versions
                .iter()
                .filter(|v| v.state != KeyState::Destroyed)
                .map(|v| v.kid.clone()),
        );
    }
    let mut distinct = all_kids.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), all_kids.len(), "kids collide: {all_kids:?}");
    let published: Vec<String> = k
        .list()?
        .iter()
        .flat_map(|key| key.versions.clone())
        .filter(|v| v.state.published())
        .map(|v| v.kid.clone())
        .collect();
    assert_eq!(jwks_kids(k)?, published);
    Ok(())
}

#[tokio::test]
async fn rotation_moves_versions_next_active_retired() -> TestResult {
    use KeyState::{Active, Destroyed, Next, Retired};
    let backend = MemoryBackend::new();
    let k = keyring(&backend);
    k.refresh().await?;
    let key = k
        .create(
            "idp",
            Alg::EdDsa.into(),
            KeySize::default(),
            false,
            &[],
            NOW,
        )
        .await?;
    assert_eq!(states(&key), [Active]);
    assert_invariants(&k)?;

    // Rotate: the new version is `next` (published, not signing); v1 still signs.
    let key = k.rotate("idp", None, KeySize::default(), NOW + 1).await?;
    assert_eq!(states(&key), [Active, Next]);
    assert_eq!(k.active("idp")?.version, 1);
    assert_invariants(&k)?;

    // Activate the newest `next`: v2 signs, v1 retires (and stays published).
    let key = k.activate("idp", 0, 0).await?;
    assert_eq!(states(&key), [Retired, Active]);
    assert_eq!(k.active("idp")?.version, 2);
    assert_invariants(&k)?;

    // Another round, then a rollback to a retired version.
    k.rotate("idp", None, KeySize::default(), NOW + 2).await?;
    let key = k.activate("idp", 0, 0).await?;
    assert_eq!(states(&key), [Retired, Retired, Active]);
    let key = k.activate("idp", 2, 0).await?;
    assert_eq!(states(&key), [Retired, Active, Retired]);
    assert_invariants(&k)?;

    // Neither the active version nor an already active one moves the wrong way.
    assert!(k.destroy("idp", 2).await.is_err(), "active destroyed");
    assert!(
        k.activate("idp", 2, 0).await.is_err(),
        "active re-activated"
    );
    assert!(
        k.activate("idp", 0, 0).await.is_err(),
        "activated with no `next`"
    );
    assert_eq!(states(&k.get("idp")?), [Retired, Active, Retired]);

    // Destroy a retired version: its key pair leaves the device and the JWKS.
    let v1 = k.get("idp")?.versions[0].clone();
    let key = k.destroy("idp", 1).await?;
    assert_eq!(states(&key), [Destroyed, Active, Retired]);
    assert!(!backend.key_ids()?.contains(&v1.key_id));
    assert!(!jwks_kids(&k)?.contains(&v1.kid));
    assert!(
        k.activate("idp", 1, 0).await.is_err(),
        "destroyed re-activated"
    );
    assert_invariants(&k)?;

    // Retire the active one: nothing signs, everything still published.
    let key = k.retire("idp", 0, 0).await?;
    assert_eq!(states(&key), [Destroyed, Retired, Retired]);
    assert!(matches!(
        k.active("idp"),
        Err(KeyringError::NoActiveVersion(_))
    ));
    assert_eq!(jwks_kids(&k)?.len(), 2);
    assert_invariants(&k)?;
    Ok(())
}

#[tokio::test]
async fn kids_are_distinct_across_keys_and_versions() -> TestResult {
    let backend = MemoryBackend::new();
    let k = keyring(&backend);
    k.create("a", Alg::EdDsa.into(), KeySize::default(), false, &[], NOW)
        .await?;
    k.create("b", Alg::Es256.into(), KeySize::default(), false, &[], NOW)
        .await?;
    k.create("c", Alg::Es384.into(), KeySize::default(), false, &[], NOW)
        .await?;
    for _ in 0..3 {
        k.rotate("a", None, KeySize::default(), NOW).await?;
        k.rotate("b", None, KeySize::default(), NOW).await?;
    }
    // A rotation may change the alg, and with it the key pair's kind.
    let b = k
        .rotate("b", Some(Alg::Es384.into()), KeySize::default(), NOW)
        .await?;
    assert_eq!(
        b.versions.last().map(|v| v.kind),
        Some(KeyKind::Ec(Curve::P384))
    );
    assert_invariants(&k)?;
    assert_eq!(jwks_kids(&k)?.len(), 4 + 5 + 1);
    Ok(())
}

#[tokio::test]
async fn a_crash_between_generate_and_record_leaves_no_half_made_version() -> TestResult {
    let backend = MemoryBackend::new();
    let k = keyring(&backend);
    k.create(
        "idp",
        Alg::EdDsa.into(),
        KeySize::default(),
        false,
        &[],
        NOW,
    )
    .await?;
    let before = k.list()?;
    let jwks = k.jwks()?;

    // Rotation: the key pair is made, the process dies before the record is written.
    backend.crash_after_generate()?;
    assert!(
        k.rotate("idp", None, KeySize::default(), NOW)
            .await
            .is_err()
    );
    assert_eq!(
        backend.key_ids()?.len(),
        2,
        "an orphan key pair on the device"
    );
    assert_eq!(k.list()?, before);
    assert_eq!(k.jwks()?, jwks);

    // Creation: the same, and the name stays free.
    backend.crash_after_generate()?;
    assert!(
        k.create(
            "new",
            Alg::Es256.into(),
            KeySize::default(),
            false,
            &[],
            NOW
        )
        .await
        .is_err()
    );
    assert!(matches!(k.get("new"), Err(KeyringError::KeyNotFound(_))));

    // A restarted process sees neither: nothing half-made is active or published.
    let r = reloaded(&backend).await?;
    assert_eq!(r.list()?, before);
    assert_eq!(r.jwks()?, jwks);
    assert_invariants(&r)?;

    // Both operations work afterwards, and the orphan never becomes a version.
    let key = r.rotate("idp", None, KeySize::default(), NOW).await?;
    assert_eq!(key.versions.len(), 2);
    r.create(
        "new",
        Alg::Es256.into(),
        KeySize::default(),
        false,
        &[],
        NOW,
    )
    .await?;
    let versions: Vec<_> = r.list()?.into_iter().flat_map(|k| k.versions).collect();
    let orphans = backend
        .key_ids()?
        .into_iter()
        .filter(|id| !versions.iter().any(|v| &v.key_id == id))
        .count();
    assert_eq!(orphans, 2);
    assert_invariants(&r)?;
    Ok(())
}

#[tokio::test]
async fn a_failed_record_write_takes_the_new_key_pair_with_it() -> TestResult {
    let backend = MemoryBackend::new();
    let k = keyring(&backend);
    k.create(
        "idp",
        Alg::EdDsa.into(),
        KeySize::default(),
        false,
        &[],
        NOW,
    )
    .await?;
    let before = k.list()?;
    backend.fail_put_record_after(0)?;
    assert!(
        k.rotate("idp", None, KeySize::default(), NOW)
            .await
            .is_err()
    );
    assert_eq!(backend.key_ids()?.len(), 1, "no unreachable key pair left");
    assert_eq!(k.list()?, before);
    assert_eq!(reloaded(&backend).await?.list()?, before);
    Ok(())
}

#[tokio::test]
async fn a_crash_half_way_through_activation_leaves_the_newest_active() -> TestResult {
    let backend = MemoryBackend::new();
    let k = keyring(&backend);
    k.create(
        "idp",
        Alg::EdDsa.into(),
        KeySize::default(),
        false,
        &[],
        NOW,
    )
    .await?;
    k.rotate("idp", None, KeySize::default(), NOW).await?;
    // The first write (v2 active) lands, the second (v1 retired) does not.
    backend.fail_put_record_after(1)?;
    assert!(k.activate("idp", 0, 0).await.is_err());
    for keyring in [&k, &reloaded(&backend).await?] {
        keyring.refresh().await?;
        let key = keyring.get("idp")?;
        assert_eq!(states(&key), [KeyState::Retired, KeyState::Active]);
        assert_eq!(keyring.active("idp")?.version, 2);
        assert_eq!(jwks_kids(keyring)?.len(), 2);
        assert_invariants(keyring)?;
    }
    Ok(())
}

#[tokio::test]
async fn a_crash_between_destroy_record_and_key_destroy_unpublishes_the_version() -> TestResult {
    let backend = MemoryBackend::new();
    let k = keyring(&backend);
    k.create(
        "idp",
        Alg::EdDsa.into(),
        KeySize::default(),
        false,
        &[],
        NOW,
    )
    .await?;
    k.rotate("idp", None, KeySize::default(), NOW).await?;
    k.activate("idp", 0, 0).await?;
    let v1 = k.get("idp")?.versions[0].clone();
    backend.fail_destroy()?;
    assert!(k.destroy("idp", 1).await.is_err());
    // The record says destroyed; the key pair is an orphan, never a published key that
    // cannot sign.
    assert!(backend.key_ids()?.contains(&v1.key_id));
    let r = reloaded(&backend).await?;
    assert_eq!(r.get("idp")?.versions[0].state, KeyState::Destroyed);
    assert!(!jwks_kids(&r)?.contains(&v1.kid));
    assert_invariants(&r)?;
    Ok(())
}

#[tokio::test]
async fn reloading_from_the_records_gives_the_same_keyring() -> TestResult {
    let backend = MemoryBackend::new();
    let k = keyring(&backend);
    k.create(
        "idp",
        Alg::EdDsa.into(),
        KeySize::default(),
        false,
        &[],
        NOW,
    )
    .await?;
    k.rotate("idp", None, KeySize::default(), NOW + 10).await?;
    k.activate("idp", 0, 0).await?;
    k.rotate("idp", None, KeySize::default(), NOW + 20).await?;
    k.destroy("idp", 1).await?;
    k.create(
        "client",
        Alg::Es256.into(),
        KeySize::default(),
        true,
        &[],
        NOW + 30,
    )
    .await?;
    k.retire("client", 0, 0).await?;
    k.create(
        "dpop",
        Alg::Ed25519.into(),
        KeySize::default(),
        false,
        &[],
        NOW + 40,
    )
    .await?;
    let uri = backend.add_foreign_ed25519("made elsewhere")?;
    k.adopt("legacy", Alg::EdDsa.into(), false, &uri, &[], NOW + 50)
        .await?;
    assert!(
        k.adopt("again", Alg::EdDsa.into(), false, &uri, &[], NOW)
            .await
            .is_err(),
        "one key pair adopted twice"
    );
    let seed = [7u8; 32];
    let pair =
        ring::signature::Ed25519KeyPair::from_seed_unchecked(&seed).map_err(|e| format!("{e}"))?;
    let material = PrivateKeyMaterial::Ed25519 {
        seed: zeroize::Zeroizing::new(seed.to_vec()),
        public: PublicKey::Ed25519 {
            x: ring::signature::KeyPair::public_key(&pair)
                .as_ref()
                .to_vec(),
        },
    };
    k.import(
        "migrated",
        Alg::EdDsa.into(),
        false,
        material,
        &[],
        NOW + 60,
    )
    .await?;
    assert_invariants(&k)?;

    let r = reloaded(&backend).await?;
    assert_eq!(as_recorded(&r.list()?), as_recorded(&k.list()?));
    assert_eq!(r.jwks()?, k.jwks()?);
    assert!(r.get("client")?.fapi2);
    assert_eq!(r.get("legacy")?.versions[0].origin, Origin::Adopted);
    assert_eq!(r.get("migrated")?.versions[0].origin, Origin::Imported);
    assert_eq!(r.get("idp")?.versions[1].created_at, NOW + 10);
    // The in-memory backend signs Ed25519 for real: the reloaded keyring's active version
    // signs, and ring verifies it against the published public key.
    let v = r.active("idp")?;
    let sig = r
        .backend()
        .sign(
            &v.key_id,
            v.kind,
            crate::crypto::SignOp::Ed25519 {
                message: b"after reload".to_vec(),
            },
            std::time::Instant::now(),
        )
        .await?;
    let PublicKey::Ed25519 { x } = &v.public else {
        return Err("not Ed25519".into());
    };
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, x)
        .verify(b"after reload", &sig)
        .map_err(|_| "signature does not verify")?;
    Ok(())
}

#[tokio::test]
async fn records_that_vanish_keep_the_last_known_keyring() -> TestResult {
    let backend = MemoryBackend::new();
    let k = keyring(&backend);
    k.create(
        "idp",
        Alg::EdDsa.into(),
        KeySize::default(),
        false,
        &[],
        NOW,
    )
    .await?;
    let jwks = k.jwks()?;
    backend.hide_records(true)?;
    assert!(k.refresh().await.is_err());
    assert_eq!(
        k.jwks()?,
        jwks,
        "JWKS kept while the device hides its records"
    );
    assert_eq!(k.active("idp")?.version, 1);
    assert!(
        k.rotate("idp", None, KeySize::default(), NOW)
            .await
            .is_err(),
        "no change on a keyring that cannot be read"
    );
    backend.hide_records(false)?;
    k.refresh().await?;
    assert_eq!(k.jwks()?, jwks);
    assert_invariants(&k)?;
    Ok(())
}

#[tokio::test]
async fn a_device_error_while_loading_never_drops_a_version() -> TestResult {
    let backend = MemoryBackend::new();
    let k = keyring(&backend);
    k.create(
        "idp",
        Alg::EdDsa.into(),
        KeySize::default(),
        false,
        &[],
        NOW,
    )
    .await?;
    k.rotate("idp", None, KeySize::default(), NOW).await?;
    k.create(
        "client",
        Alg::Es256.into(),
        KeySize::default(),
        false,
        &[],
        NOW,
    )
    .await?;
    // A restarted process loads while the device briefly fails to read one public key (a
    // YubiKey still held by the process that just exited does this): the load may fail and be
    // retried, but a keyring with that version missing (its key without an active version, its
    // kid gone from the JWKS) must never be served.
    backend.fail_key_reads(1)?;
    let r = keyring(&backend);
    match r.refresh().await {
        Err(_) => assert!(
            matches!(r.list(), Err(KeyringError::NotLoaded { .. })),
            "a failed load served a keyring"
        ),
        Ok(()) => assert_eq!(as_recorded(&r.list()?), as_recorded(&k.list()?)),
    }
    r.refresh().await?;
    assert_eq!(as_recorded(&r.list()?), as_recorded(&k.list()?));
    assert_eq!(r.jwks()?, k.jwks()?);
    Ok(())
}

/// The kinds of what a report found, in order.
fn kinds(report: &RepairReport) -> Vec<&'static str> {
    report.found.iter().map(Leftover::kind).collect()
}

/// Repair on a restarted process: a dry run reports `expected` and changes nothing; the repair
/// removes it; a second repair finds nothing. Returns the repaired keyring.
async fn repair_finds(
    backend: &MemoryBackend,
    expected: &[&str],
) -> Result<Keyring, Box<dyn std::error::Error>> {
    let r = reloaded(backend).await?;
    assert_invariants(&r)?;
    let (labels, ids) = (backend.record_labels()?, backend.key_ids()?);
    let dry = r.repair(true).await?;
    assert_eq!(kinds(&dry), expected, "{:?}", dry.found);
    assert!(!dry.repaired);
    assert_eq!(backend.record_labels()?, labels, "a dry run wrote records");
    assert_eq!(backend.key_ids()?, ids, "a dry run destroyed key pairs");
    let done = r.repair(false).await?;
    assert_eq!(done.found, dry.found);
    assert!(done.repaired);
    assert_invariants(&r)?;
    let again = reloaded(backend).await?.repair(false).await?;
    assert_eq!(kinds(&again), Vec::<&str>::new(), "{:?}", again.found);
    // Exactly one record copy per version is left.
    let labels = backend.record_labels()?;
    let mut distinct = labels.clone();
    distinct.dedup();
    assert_eq!(labels, distinct);
    Ok(r)
}

#[tokio::test]
async fn repair_destroys_the_key_pairs_that_crashed_creations_left() -> TestResult {
    let backend = MemoryBackend::new();
    let k = keyring(&backend);
    k.create(
        "idp",
        Alg::EdDsa.into(),
        KeySize::default(),
        false,
        &[],
        NOW,
    )
    .await?;
    let kept = backend.key_ids()?;
    backend.crash_after_generate()?;
    assert!(
        k.rotate("idp", None, KeySize::default(), NOW)
            .await
            .is_err()
    );
    backend.crash_after_generate()?;
    assert!(
        k.create(
            "new",
            Alg::Es256.into(),
            KeySize::default(),
            false,
            &[],
            NOW
        )
        .await
        .is_err()
    );
    // Another tool's key pair is not sigild's to destroy, even though no record names it.
    backend.add_foreign_ed25519("made elsewhere")?;
    let foreign = backend.key_ids()?.last().cloned();
    let before = reloaded(&backend).await?;
    let (list, jwks) = (before.list()?, before.jwks()?);

    let r = repair_finds(&backend, &["orphan-key-pair", "orphan-key-pair"]).await?;
    let mut left = kept.clone();
    left.extend(foreign);
    assert_eq!(backend.key_ids()?, left);
    assert_eq!(r.list()?, list);
    assert_eq!(r.jwks()?, jwks);
    // The name of the crashed creation is free, and rotation numbers on.
    r.create(
        "new",
        Alg::Es256.into(),
        KeySize::default(),
        false,
        &[],
        NOW,
    )
    .await?;
    assert_eq!(
        r.rotate("idp", None, KeySize::default(), NOW)
            .await?
            .versions
            .len(),
        2
    );
    Ok(())
}

#[tokio::test]
async fn an_activation_interrupted_in_its_first_record_replacement_is_repaired() -> TestResult {
    let backend = MemoryBackend::new();
    let k = keyring(&backend);
    k.create(
        "idp",
        Alg::EdDsa.into(),
        KeySize::default(),
        false,
        &[],
        NOW,
    )
    .await?;
    k.rotate("idp", None, KeySize::default(), NOW).await?;
    // v2's new record (active) is written, its old copy (next) stays; v1 is still active.
    backend.crash_in_record_replacement_after(0)?;
    assert!(k.activate("idp", 0, 0).await.is_err());
    let r = reloaded(&backend).await?;
    assert_eq!(
        states(&r.get("idp")?),
        [KeyState::Retired, KeyState::Active]
    );
    assert_eq!(r.active("idp")?.version, 2);
    let r = repair_finds(&backend, &["stale-record", "extra-active"]).await?;
    assert_eq!(
        states(&r.get("idp")?),
        [KeyState::Retired, KeyState::Active]
    );
    Ok(())
}

#[tokio::test]
async fn an_activation_interrupted_in_its_second_record_replacement_is_repaired() -> TestResult {
    let backend = MemoryBackend::new();
    let k = keyring(&backend);
    k.create(
        "idp",
        Alg::EdDsa.into(),
        KeySize::default(),
        false,
        &[],
        NOW,
    )
    .await?;
    k.rotate("idp", None, KeySize::default(), NOW).await?;
    backend.crash_in_record_replacement_after(1)?;
    assert!(k.activate("idp", 0, 0).await.is_err());
    let r = repair_finds(&backend, &["stale-record"]).await?;
    assert_eq!(
        states(&r.get("idp")?),
        [KeyState::Retired, KeyState::Active]
    );
    Ok(())
}

#[tokio::test]
async fn the_later_of_two_activations_wins_even_for_an_older_version() -> TestResult {
    let backend = MemoryBackend::new();
    let k = keyring(&backend);
    k.create(
        "idp",
        Alg::EdDsa.into(),
        KeySize::default(),
        false,
        &[],
        NOW,
    )
    .await?;
    k.rotate("idp", None, KeySize::default(), NOW).await?;
    k.activate("idp", 0, 0).await?;
    // Roll back to v1: v1's record says active, the process dies before v2 is retired.
    backend.fail_put_record_after(1)?;
    assert!(k.activate("idp", 1, 0).await.is_err());
    let r = reloaded(&backend).await?;
    assert_eq!(
        r.active("idp")?.version,
        1,
        "the activation written last signs"
    );
    assert_eq!(
        states(&r.get("idp")?),
        [KeyState::Active, KeyState::Retired]
    );
    let r = repair_finds(&backend, &["extra-active"]).await?;
    assert_eq!(
        states(&r.get("idp")?),
        [KeyState::Active, KeyState::Retired]
    );
    Ok(())
}

#[tokio::test]
async fn a_retirement_interrupted_in_its_record_replacement_is_repaired() -> TestResult {
    let backend = MemoryBackend::new();
    let k = keyring(&backend);
    k.create(
        "idp",
        Alg::EdDsa.into(),
        KeySize::default(),
        false,
        &[],
        NOW,
    )
    .await?;
    backend.crash_in_record_replacement_after(0)?;
    assert!(k.retire("idp", 0, 0).await.is_err());
    let r = reloaded(&backend).await?;
    assert_eq!(states(&r.get("idp")?), [KeyState::Retired]);
    repair_finds(&backend, &["stale-record"]).await?;
    Ok(())
}

#[tokio::test]
async fn a_destruction_interrupted_anywhere_is_repaired() -> TestResult {
    for crash in 0..2 {
        let backend = MemoryBackend::new();
        let k = keyring(&backend);
        k.create(
            "idp",
            Alg::EdDsa.into(),
            KeySize::default(),
            false,
            &[],
            NOW,
        )
        .await?;
        k.rotate("idp", None, KeySize::default(), NOW).await?;
        k.activate("idp", 0, 0).await?;
        let v1 = k.get("idp")?.versions[0].clone();
        let expected: &[&str] = if crash == 0 {
            // Between writing the destroyed record and removing its old copy.
            backend.crash_in_record_replacement_after(0)?;
            &["stale-record", "destroyed-key-pair"]
        } else {
            // After the record, before the key pair.
            backend.fail_destroy()?;
            &["destroyed-key-pair"]
        };
        assert!(k.destroy("idp", 1).await.is_err());
        let r = reloaded(&backend).await?;
        assert_eq!(r.get("idp")?.versions[0].state, KeyState::Destroyed);
        assert!(!jwks_kids(&r)?.contains(&v1.kid));
        repair_finds(&backend, expected).await?;
        assert!(!backend.key_ids()?.contains(&v1.key_id));
    }
    Ok(())
}

#[tokio::test]
async fn a_version_whose_key_pair_is_gone_is_reported_then_recorded_destroyed() -> TestResult {
    let backend = MemoryBackend::new();
    let k = keyring(&backend);
    k.create(
        "idp",
        Alg::EdDsa.into(),
        KeySize::default(),
        false,
        &[],
        NOW,
    )
    .await?;
    k.rotate("idp", None, KeySize::default(), NOW).await?;
    let [v1, v2] = [0, 1].map(|i| k.get("idp").map(|key| key.versions[i].clone()));
    let (v1, v2) = (v1?, v2?);
    // The device loses both key pairs (a restored partition, another tool).
    backend.destroy(&v1.key_id).await?;
    backend.destroy(&v2.key_id).await?;
    let r = reloaded(&backend).await?;
    assert!(
        matches!(r.active("idp"), Err(KeyringError::NoActiveVersion(_))),
        "a version without its key pair never signs"
    );
    assert_eq!(jwks_kids(&r)?, Vec::<String>::new());
    let dry = r.repair(true).await?;
    assert_eq!(kinds(&dry), ["missing-key-pair", "missing-key-pair"]);
    // Repair says that the active version goes, and what to do.
    assert!(
        dry.found[0].action().contains("no active version"),
        "{}",
        dry.found[0].action()
    );
    assert!(!dry.found[1].action().contains("no active version"));
    let r = repair_finds(&backend, &["missing-key-pair", "missing-key-pair"]).await?;
    assert_eq!(
        states(&r.get("idp")?),
        [KeyState::Destroyed, KeyState::Destroyed]
    );
    // Rotation numbers on and activation brings the key back.
    r.rotate("idp", None, KeySize::default(), NOW).await?;
    r.activate("idp", 0, 0).await?;
    assert_eq!(r.active("idp")?.version, 3);
    Ok(())
}

#[test]
fn records_of_older_releases_have_generation_zero() -> Result<(), serde_json::Error> {
    let json = r#"{"format":1,"name":"idp","version":1,"state":"active","alg":"EdDSA","fapi2":false,"key_id":"00","origin":"generated","created_at":0}"#;
    assert_eq!(serde_json::from_str::<VersionRecord>(json)?.generation, 0);
    Ok(())
}

#[tokio::test]
async fn decryption_keys_publish_use_enc_and_never_sign() -> TestResult {
    let backend = MemoryBackend::new();
    let k = keyring(&backend);
    let p384 = KeySize {
        rsa_bits: 0,
        curve: Some(Curve::P384),
    };
    k.create("enc", JweAlg::EcdhEsA256Kw.into(), p384, true, &[], NOW)
        .await?;
    k.create(
        "sig",
        Alg::Es256.into(),
        KeySize::default(),
        false,
        &[],
        NOW,
    )
    .await?;
    let enc = k.active("enc")?;
    assert_eq!(enc.purpose(), KeyPurpose::Decrypt);
    assert_eq!(enc.kind, KeyKind::Ec(Curve::P384));
    let jwks = k.jwks()?;
    let entry = |kid: &str| {
        jwks["keys"]
            .as_array()
            .and_then(|keys| keys.iter().find(|e| e["kid"] == kid).cloned())
    };
    let e = entry(&enc.kid).ok_or("enc key missing from the JWKS")?;
    assert_eq!(
        (e["use"].as_str(), e["alg"].as_str(), e["crv"].as_str()),
        (Some("enc"), Some("ECDH-ES+A256KW"), Some("P-384"))
    );
    let s = entry(&k.active("sig")?.kid).ok_or("sig key missing from the JWKS")?;
    assert_eq!(
        (s["use"].as_str(), s["alg"].as_str()),
        (Some("sig"), Some("ES256"))
    );
    // A decryption key never reaches the signing path.
    assert!(matches!(
        k.signing("enc"),
        Err(KeyringError::WrongPurpose {
            purpose: KeyPurpose::Decrypt,
            ..
        })
    ));
    assert_eq!(k.signing("sig")?.1, Alg::Es256);
    // The purpose and the curve survive a reload from the records.
    let r = reloaded(&backend).await?;
    assert_eq!(as_recorded(&r.list()?), as_recorded(&k.list()?));
    assert_eq!(r.active("enc")?.alg, KeyAlg::Decrypt(JweAlg::EcdhEsA256Kw));
    Ok(())
}

#[tokio::test]
async fn a_key_keeps_its_purpose_and_curve_across_rotations() -> TestResult {
    let backend = MemoryBackend::new();
    let k = keyring(&backend);
    let p384 = KeySize {
        rsa_bits: 0,
        curve: Some(Curve::P384),
    };
    k.create("enc", JweAlg::EcdhEs.into(), p384, false, &[], NOW)
        .await?;
    // Another purpose is refused, whatever the alg.
    for alg in [KeyAlg::Sign(Alg::Es384), KeyAlg::Sign(Alg::EdDsa)] {
        assert!(matches!(
            k.rotate("enc", Some(alg), KeySize::default(), NOW).await,
            Err(KeyringError::PurposeChange { .. })
        ));
    }
    k.create(
        "sig",
        Alg::Es256.into(),
        KeySize::default(),
        false,
        &[],
        NOW,
    )
    .await?;
    assert!(matches!(
        k.rotate("sig", Some(JweAlg::EcdhEs.into()), KeySize::default(), NOW)
            .await,
        Err(KeyringError::PurposeChange { .. })
    ));
    assert_eq!(k.get("enc")?.versions.len(), 1);
    // Without a curve the new version keeps the key's; another JWE alg of the same purpose is
    // allowed.
    let key = k.rotate("enc", None, KeySize::default(), NOW + 1).await?;
    assert_eq!(key.versions[1].kind, KeyKind::Ec(Curve::P384));
    let key = k
        .rotate(
            "enc",
            Some(JweAlg::EcdhEsA128Kw.into()),
            KeySize::default(),
            NOW + 2,
        )
        .await?;
    assert_eq!(key.versions[2].alg, KeyAlg::Decrypt(JweAlg::EcdhEsA128Kw));
    assert_eq!(key.versions[2].kind, KeyKind::Ec(Curve::P384));
    assert_eq!(
        states(&key),
        [KeyState::Active, KeyState::Next, KeyState::Next]
    );
    assert_invariants(&k)?;
    Ok(())
}

#[test]
fn kinds_for_decryption_algs_and_curves() {
    let size = |rsa_bits, curve| KeySize { rsa_bits, curve };
    let enc = |a: JweAlg| KeyAlg::Decrypt(a);
    assert_eq!(
        kind_for(enc(JweAlg::EcdhEs), size(0, None)).ok(),
        Some(KeyKind::Ec(Curve::P256))
    );
    assert_eq!(
        kind_for(enc(JweAlg::EcdhEsA256Kw), size(0, Some(Curve::P384))).ok(),
        Some(KeyKind::Ec(Curve::P384))
    );
    assert_eq!(
        kind_for(enc(JweAlg::RsaOaep256), size(3072, None)).ok(),
        Some(KeyKind::Rsa { bits: 3072 })
    );
    assert_eq!(
        kind_for(enc(JweAlg::RsaOaep), size(0, None)).ok(),
        Some(KeyKind::Rsa { bits: 2048 })
    );
    assert!(matches!(
        kind_for(enc(JweAlg::RsaOaep256), size(1024, None)),
        Err(KeyringError::UnsupportedKeySize(1024))
    ));
    // A curve where the alg fixes another one, or takes none, is refused rather than ignored.
    for (alg, curve) in [
        (KeyAlg::Sign(Alg::Es256), Curve::P384),
        (KeyAlg::Sign(Alg::Es384), Curve::P256),
        (KeyAlg::Sign(Alg::EdDsa), Curve::P256),
        (enc(JweAlg::RsaOaep256), Curve::P256),
    ] {
        assert!(
            matches!(
                kind_for(alg, size(0, Some(curve))),
                Err(KeyringError::CurveMismatch { .. })
            ),
            "{alg} on {curve:?}"
        );
    }
    assert_eq!(
        kind_for(KeyAlg::Sign(Alg::Es384), size(0, Some(Curve::P384))).ok(),
        Some(KeyKind::Ec(Curve::P384))
    );
    assert_eq!(parse_curve("P-384").ok(), Some(Curve::P384));
    assert!(matches!(
        parse_curve("secp256k1"),
        Err(KeyringError::UnknownCurve(_))
    ));
}

#[tokio::test]
async fn bindings_are_recorded_carried_across_rotation_and_reloaded() -> TestResult {
    let backend = MemoryBackend::new();
    let k = keyring(&backend);
    k.refresh().await?;
    let serves = [TokenType::Logout, TokenType::IdToken, TokenType::IdToken];
    let bound = k
        .create(
            "idp",
            Alg::Es256.into(),
            KeySize::default(),
            false,
            &serves,
            NOW,
        )
        .await?;
    let want: BTreeSet<TokenType> = [TokenType::IdToken, TokenType::Logout].into();
    assert_eq!(bound.serves, want);
    k.create(
        "free",
        Alg::EdDsa.into(),
        KeySize::default(),
        false,
        &[],
        NOW,
    )
    .await?;
    let rotated = k.rotate("idp", None, KeySize::default(), NOW + 1).await?;
    assert_eq!(rotated.serves, want);
    assert!(rotated.versions.iter().all(|v| v.serves == want));
    k.activate("idp", 2, 0).await?;
    assert_eq!(k.signing("idp")?.0.serves, want);
    // A restart reads the same bindings back; the unbound key stays unbound.
    let r = reloaded(&backend).await?;
    assert_eq!(as_recorded(&r.list()?), as_recorded(&k.list()?));
    assert_eq!(r.get("idp")?.serves, want);
    assert!(r.get("free")?.serves.is_empty());
    // Decryption keys sign nothing, so they cannot be bound.
    let e = k
        .create(
            "enc",
            JweAlg::EcdhEs.into(),
            KeySize::default(),
            false,
            &[TokenType::IdToken],
            NOW,
        )
        .await
        .err();
    assert!(
        matches!(&e, Some(KeyringError::WrongPurpose { want, .. }) if want.contains("bound")),
        "{e:?}"
    );
    assert!(matches!(k.get("enc"), Err(KeyringError::KeyNotFound(_))));
    Ok(())
}

#[tokio::test]
async fn a_named_version_signs_while_active_or_within_its_grace_period() -> TestResult {
    let backend = MemoryBackend::new();
    let k = keyring(&backend).with_grace(Duration::from_secs(300));
    k.create(
        "idp",
        Alg::Es256.into(),
        KeySize::default(),
        false,
        &[],
        NOW,
    )
    .await?;
    k.rotate("idp", None, KeySize::default(), NOW).await?;
    // v2 is `next`: never active, never signs when named.
    assert!(matches!(
        k.signing_version("idp", Pick::Version(2), NOW),
        Err(KeyringError::VersionNotSigning { version: 2, .. })
    ));
    k.activate("idp", 2, NOW + 10).await?;
    let key = k.get("idp")?;
    let (v1, v2) = (key.versions[0].clone(), key.versions[1].clone());
    assert_eq!(v1.deactivated_at, Some(NOW + 10));
    assert_eq!(v2.deactivated_at, None);
    for pick in [Pick::Version(1), Pick::Kid(&v1.kid)] {
        let (v, _) = k.signing_version("idp", pick, NOW + 10 + 299)?;
        assert_eq!(v.version, 1, "{pick:?} within the grace period");
        let refused = k.signing_version("idp", pick, NOW + 10 + 300);
        assert!(
            matches!(
                &refused,
                Err(KeyringError::VersionNotSigning { active_kid: Some(kid), .. }) if *kid == v2.kid
            ),
            "{pick:?} after the grace period: {refused:?}"
        );
    }
    // The active one, named or not; a kid of no version: the active one (whose kid check
    // then refuses the header).
    assert_eq!(
        k.signing_version("idp", Pick::Version(2), NOW)?.0.version,
        2
    );
    assert_eq!(k.signing_version("idp", Pick::Active, NOW)?.0.version, 2);
    assert_eq!(
        k.signing_version("idp", Pick::Kid("nope"), NOW)?.0.version,
        2
    );
    assert!(matches!(
        k.signing_version("idp", Pick::Version(7), NOW),
        Err(KeyringError::VersionNotFound { .. })
    ));
    // Every replica reads the same time from the device.
    let replica = reloaded(&backend)
        .await?
        .with_grace(Duration::from_secs(300));
    assert_eq!(
        replica.get("idp")?.versions[0].deactivated_at,
        Some(NOW + 10)
    );
    // Activated again, it forgets; retired by hand, the grace starts then.
    k.activate("idp", 1, NOW + 20).await?;
    assert_eq!(k.get("idp")?.versions[0].deactivated_at, None);
    assert_eq!(k.get("idp")?.versions[1].deactivated_at, Some(NOW + 20));
    k.retire("idp", 1, NOW + 30).await?;
    assert!(k.signing_version("idp", Pick::Version(1), NOW + 31).is_ok());
    assert!(matches!(
        k.signing_version("idp", Pick::Version(1), NOW + 330),
        Err(KeyringError::VersionNotSigning {
            active_kid: None,
            ..
        })
    ));
    Ok(())
}

#[tokio::test]
async fn watches_wake_when_a_load_finds_the_keyring_changed() -> TestResult {
    let backend = MemoryBackend::new();
    let k = keyring(&backend);
    k.refresh().await?;
    let mut w = k.watch()?;
    k.create(
        "idp",
        Alg::Es256.into(),
        KeySize::default(),
        false,
        &[],
        NOW,
    )
    .await?;
    assert!(w.changed().await);
    // A change made by another process is seen at the next refresh.
    let other = reloaded(&backend).await?;
    other.rotate("idp", None, KeySize::default(), NOW).await?;
    k.refresh().await?;
    assert!(w.changed().await);
    k.close_watches();
    assert!(!w.changed().await);
    Ok(())
}
