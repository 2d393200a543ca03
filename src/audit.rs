//! The audit trail: one JSON line per request — who asked, what for, with which key version,
//! what was decided and how it ended. Claim values that identify people or clients (`iss`,
//! `aud`, `sub`) are recorded as hashes; payloads, PINs and signatures never. A decryption is
//! recorded with the SHA-256 of the JWE it was given; the plaintext never.
//!
//! Written synchronously by a dedicated writer rather than through the `tracing` pipeline:
//! the fail-closed mode must know that the record reached the file (the `write` system call
//! returned) before a signature is released, and a tracing subscriber cannot report a write
//! failure back to the event site. One `write` of a whole line under a mutex keeps lines
//! whole when requests run in parallel. By default not synced per record (that caps signing at
//! the disk's sync rate), so a crash of the machine, not of the daemon, may lose the last
//! records; with `fsync` ([`Durability::Synced`]) each record is `fdatasync`ed before
//! [`Audit::write`] returns, so a released signature's record survives a power cut, and a
//! failed sync is a failed write (fail-closed withholds the signature).
//!
//! Owns the audit sink and the record format; must never decide what is signed or touch a
//! device.
//!
//! Hashes: SHA-256 of the UTF-8 value, first 16 bytes, base64url (22 characters) — enough to
//! correlate records with an IdP's own logs, not enough to recover low-entropy values cheaply
//! unless they are guessed (a `sub` can be guessed; treat the audit file as sensitive).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;
use sha2::Digest as _;
use time::format_description::well_known::{Iso8601, iso8601};

/// Where records go.
enum Sink {
    /// Nowhere (no `[audit]` table).
    Off,
    /// Standard output (stdout carries nothing else in `serve`).
    Stdout,
    /// An append-only file.
    File {
        /// For error messages.
        path: PathBuf,
        /// The open file; the lock makes each record one uninterrupted write (and keeps a
        /// record and its sync together).
        file: Mutex<std::fs::File>,
        /// Whether each record is synced to the disk before the write returns.
        durability: Durability,
    },
    /// An in-memory list (tests).
    Memory(Mutex<Vec<String>>),
}

/// How far a file record must have got when [`Audit::write`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Handed to the kernel (`write` returned): survives a crash of the daemon, not of the
    /// machine. Signing is not slowed by the disk.
    #[default]
    Written,
    /// On the disk (`write`, then `fdatasync`): survives a power cut. One disk flush per record.
    Synced,
}

/// The audit writer.
pub struct Audit {
    /// Destination.
    sink: Sink,
    /// Withhold the signature when its record cannot be written.
    fail_closed: bool,
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sink = match &self.sink {
            Sink::Off => "off".to_owned(),
            Sink::Stdout => "stdout".to_owned(),
            Sink::File {
                path, durability, ..
            } => format!("{} ({durability:?})", path.display()),
            Sink::Memory(_) => "memory".to_owned(),
        };
        f.debug_struct("Audit")
            .field("sink", &sink)
            .field("fail_closed", &self.fail_closed)
            .finish()
    }
}

/// One audit record. Field names are the JSON keys.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Record {
    /// RFC 3339 UTC time the request arrived.
    pub time: String,
    /// Request id (also in error statuses and logs).
    pub request_id: String,
    /// The caller identity.
    pub caller: String,
    /// How it connected: `tls`, `unix`, `plaintext`, `in-process`.
    pub via: &'static str,
    /// Operation (`id-token`, `dpop`, `admin:create`, `read:jwks`, …).
    pub operation: String,
    /// The token type a signature makes (`id-token`, `access-token`, `raw`, …): the
    /// operation's, except that a generic `jws` whose `typ` a profile owns is recorded as that
    /// profile's type, and a `tls` request whose input is no TLS 1.3 handshake as `raw`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_type: Option<&'static str>,
    /// Key name.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub key: String,
    /// Key version that signed (or was acted on).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// Its kid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    /// JOSE alg.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
    /// JWE content encryption (`enc`) of a decrypted JWE.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enc: Option<String>,
    /// SHA-256 of a compact JWE given to decrypt, base64url ([`digest`]): ties the record to
    /// the ciphertext without holding it (the plaintext is never recorded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwe_sha256: Option<String>,
    /// SHA-256 of the caller's digest signed by `SignDigest`, base64url ([`digest`]): what was
    /// signed cannot be recorded otherwise, since sigild never sees the message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest_sha256: Option<String>,
    /// Protected header `typ`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub typ: Option<String>,
    /// Hash of `iss`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iss_hash: Option<String>,
    /// Hashes of each `aud` value.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub aud_hash: Vec<String>,
    /// Hash of `sub`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub_hash: Option<String>,
    /// The token's `jti` (random, identifies the token for revocation and replay checks).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// `allow`, `deny` (policy) or `limited` (rate limit).
    pub decision: &'static str,
    /// `ok` or the gRPC status name of the failure.
    pub outcome: String,
    /// Why it was denied or failed, without claim values.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Time from arrival to answer, microseconds.
    pub latency_us: u64,
}

/// Why an audit record could not be written.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// Opening the file at start-up.
    #[error("audit file {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Writing a record.
    #[error("audit write failed: {0}")]
    Write(#[source] std::io::Error),
    /// Syncing a written record to the disk (`[audit] fsync`).
    #[error("audit fsync failed: {0}")]
    Sync(#[source] std::io::Error),
}

impl Audit {
    /// No audit trail.
    pub fn off() -> Audit {
        Audit {
            sink: Sink::Off,
            fail_closed: false,
        }
    }

    /// Records to standard output.
    pub fn stdout(fail_closed: bool) -> Audit {
        Audit {
            sink: Sink::Stdout,
            fail_closed,
        }
    }

    /// Records appended to `path` (created 0600 if missing), handed to the kernel per record.
    ///
    /// # Errors
    /// [`AuditError::Open`].
    pub fn file(path: &Path, fail_closed: bool) -> Result<Audit, AuditError> {
        Audit::file_with(path, fail_closed, Durability::Written)
    }

    /// Records appended to `path` (created 0600 if missing), each as durable as `durability`
    /// says before [`Audit::write`] returns.
    ///
    /// # Errors
    /// [`AuditError::Open`].
    pub fn file_with(
        path: &Path,
        fail_closed: bool,
        durability: Durability,
    ) -> Result<Audit, AuditError> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)
            .map_err(|source| AuditError::Open {
                path: path.to_owned(),
                source,
            })?;
        Ok(Audit {
            sink: Sink::File {
                path: path.to_owned(),
                file: Mutex::new(file),
                durability,
            },
            fail_closed,
        })
    }

    /// Records kept in memory (tests).
    pub fn memory(fail_closed: bool) -> Audit {
        Audit {
            sink: Sink::Memory(Mutex::new(Vec::new())),
            fail_closed,
        }
    }

    /// The in-memory records (tests); empty for other sinks.
    pub fn lines(&self) -> Vec<String> {
        match &self.sink {
            Sink::Memory(m) => m
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
            _ => Vec::new(),
        }
    }

    /// Whether a failed write must withhold the signature.
    pub fn fail_closed(&self) -> bool {
        self.fail_closed
    }

    /// Whether records are written at all.
    pub fn enabled(&self) -> bool {
        !matches!(self.sink, Sink::Off)
    }

    /// Write one record as one line.
    ///
    /// # Errors
    /// [`AuditError::Write`]; [`AuditError::Sync`] when a synced file's record was written but
    /// could not be made durable.
    pub fn write(&self, record: &Record) -> Result<(), AuditError> {
        if let Sink::Off = self.sink {
            return Ok(());
        }
        let mut line =
            serde_json::to_vec(record).map_err(|e| AuditError::Write(std::io::Error::other(e)))?;
        line.push(b'\n');
        match &self.sink {
            Sink::Off => Ok(()),
            Sink::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(&line)
                    .and_then(|()| out.flush())
                    .map_err(AuditError::Write)
            }
            Sink::File {
                file, durability, ..
            } => {
                let mut f = file
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                f.write_all(&line)
                    .and_then(|()| f.flush())
                    .map_err(AuditError::Write)?;
                match durability {
                    Durability::Written => Ok(()),
                    // Under the lock: a record is on the disk before the next one is written,
                    // and the sync that reports success covers this record.
                    Durability::Synced => f.sync_data().map_err(AuditError::Sync),
                }
            }
            Sink::Memory(m) => {
                m.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(String::from_utf8_lossy(&line).trim_end().to_owned());
                Ok(())
            }
        }
    }
}

/// The audit hash of a claim value (see the module docs).
pub fn hash(value: &str) -> String {
    let d = sha2::Sha256::digest(value.as_bytes());
    crate::jose::b64(d.get(..16).unwrap_or(&d))
}

/// The full SHA-256 of `bytes`, base64url (43 characters): for ciphertexts, which are not
/// guessable, so nothing is gained by shortening it and anyone holding the JWE can match it.
pub fn digest(bytes: &[u8]) -> String {
    crate::jose::b64(&sha2::Sha256::digest(bytes))
}

/// RFC 3339 UTC with milliseconds (`2026-11-18T11:06:40.999Z`): ISO 8601's extended format
/// with a four-digit year, three decimal digits (truncated) and `Z`.
const RFC3339_MILLIS: iso8601::EncodedConfig = iso8601::Config::DEFAULT
    .set_time_precision(iso8601::TimePrecision::Second {
        decimal_digits: std::num::NonZeroU8::new(3),
    })
    .encode();

/// RFC 3339 UTC with milliseconds, from the system clock.
pub fn now_rfc3339() -> String {
    rfc3339(time::OffsetDateTime::now_utc())
}

/// Format a UTC time. Years outside 0..=9999 cannot be written with four digits; the system
/// clock does not produce them, and such a record gets an empty time rather than no record.
fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&Iso8601::<RFC3339_MILLIS>).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() -> Result<(), time::error::ComponentRange> {
        let at = |secs: i64, millis: i64| {
            time::OffsetDateTime::from_unix_timestamp(secs)
                .map(|t| rfc3339(t + time::Duration::milliseconds(millis)))
        };
        assert_eq!(at(0, 0)?, "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400, 5)?, "2000-02-29T00:00:00.005Z");
        assert_eq!(at(1_795_000_000, 999)?, "2026-11-18T11:06:40.999Z");
        // Sub-millisecond digits are cut, not rounded up into the next millisecond.
        let t = time::OffsetDateTime::from_unix_timestamp_nanos(999_999_999)?;
        assert_eq!(rfc3339(t), "1970-01-01T00:00:00.999Z");
        Ok(())
    }

    #[test]
    fn hashes_are_short_and_stable() {
        let h = hash("https://op.example.com");
        assert_eq!(h.len(), 22);
        assert_eq!(h, hash("https://op.example.com"));
        assert_ne!(h, hash("https://op.example.org"));
    }

    #[test]
    fn file_sink_appends_whole_lines() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let p = dir.path().join("audit.jsonl");
        let a = Audit::file(&p, true)?;
        let r = Record {
            caller: "c".into(),
            decision: "allow",
            outcome: "ok".into(),
            ..Record::default()
        };
        a.write(&r)?;
        a.write(&r)?;
        let text = std::fs::read_to_string(&p)?;
        assert_eq!(text.lines().count(), 2);
        let v: serde_json::Value = serde_json::from_str(text.lines().next().unwrap_or(""))?;
        assert_eq!(v["caller"], "c");
        assert!(v.get("kid").is_none());
        Ok(())
    }

    #[test]
    fn synced_records_reach_the_file_and_a_failed_sync_is_a_failed_write()
    -> Result<(), Box<dyn std::error::Error>> {
        let r = Record {
            caller: "c".into(),
            decision: "allow",
            outcome: "ok".into(),
            ..Record::default()
        };
        let dir = tempfile::tempdir()?;
        let p = dir.path().join("audit.jsonl");
        let a = Audit::file_with(&p, true, Durability::Synced)?;
        a.write(&r)?;
        assert_eq!(std::fs::read_to_string(&p)?.lines().count(), 1);
        // /dev/null takes every write and refuses fdatasync (EINVAL): the same sink without
        // syncing succeeds, so the error below comes from the sync alone.
        let null = Path::new("/dev/null");
        Audit::file_with(null, true, Durability::Written)?.write(&r)?;
        let err = Audit::file_with(null, true, Durability::Synced)?.write(&r);
        assert!(matches!(err, Err(AuditError::Sync(_))), "{err:?}");
        Ok(())
    }
}
