//! sigild's small persistent store on the card: the keyring's records and the slot table (which
//! slot holds which sigild key, since PIV keys have no labels), kept in PIV data objects.
//!
//! Why on the card and not in a state file: the keyring must follow the keys. A card moved to
//! another host, or a second daemon on the same card, then sees the same keyring with no
//! database, as with PKCS#11 data objects. The card has room: a record is ~200 bytes, and
//! [`OBJECTS`] give 4 × [`CHUNK`] bytes (about 50 key versions).
//!
//! Format: `"SGL1"`, total length (u32 BE), then entries `u16 label length ‖ label ‖ u16 value
//! length ‖ value`, the whole blob split across consecutive objects. Pure: encoding only; the
//! card I/O is in the backend.

use std::collections::BTreeMap;

/// PIV data objects holding the blob, in order. Yubico's vendor range `5FFFxx`, between its
/// ADMIN DATA / attestation objects (`5FFF00`, `5FFF01`) and the MSROOTS objects
/// (`5FFF10`–`5FFF15`), so PIV middleware and ykman never read or write them.
pub const OBJECTS: [u32; 4] = [0x5F_FF0C, 0x5F_FF0D, 0x5F_FF0E, 0x5F_FF0F];

/// Bytes per object (a YubiKey object holds up to ~3 KB; stay below it).
pub const CHUNK: usize = 2800;

const MAGIC: &[u8; 4] = b"SGL1";

/// Label prefix of slot-table entries (slot hex after it), kept apart from keyring records.
pub const SLOT_PREFIX: &str = "yubikey-slot/";

/// Why the stored blob cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The blob is not in the format above.
    #[error("sigild store on the card is corrupt: {0}")]
    Corrupt(&'static str),
    /// The entries do not fit the objects.
    #[error("sigild store is full ({0} bytes > {max}); destroy unused key versions", max = OBJECTS.len() * CHUNK)]
    Full(usize),
}

/// Decode the concatenated object contents (empty = no store yet).
///
/// # Errors
/// [`StoreError::Corrupt`].
pub fn decode(blob: &[u8]) -> Result<BTreeMap<String, Vec<u8>>, StoreError> {
    let mut out = BTreeMap::new();
    if blob.is_empty() {
        return Ok(out);
    }
    let rest = blob
        .strip_prefix(MAGIC)
        .ok_or(StoreError::Corrupt("bad magic"))?;
    let (len, mut rest) = take(rest, 4)?;
    let total = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    if rest.len() < total {
        return Err(StoreError::Corrupt("truncated"));
    }
    rest = &rest[..total];
    while !rest.is_empty() {
        let (label, r) = take_field(rest)?;
        let (value, r) = take_field(r)?;
        let label = String::from_utf8(label.to_vec()).map_err(|_| StoreError::Corrupt("label"))?;
        out.insert(label, value.to_vec());
        rest = r;
    }
    Ok(out)
}

fn take(b: &[u8], n: usize) -> Result<(&[u8], &[u8]), StoreError> {
    if b.len() < n {
        return Err(StoreError::Corrupt("truncated"));
    }
    Ok(b.split_at(n))
}

fn take_field(b: &[u8]) -> Result<(&[u8], &[u8]), StoreError> {
    let (len, rest) = take(b, 2)?;
    take(rest, u16::from_be_bytes([len[0], len[1]]) as usize)
}

/// Encode the entries and split them into at most [`OBJECTS`]`.len()` chunks.
///
/// # Errors
/// [`StoreError::Full`]; [`StoreError::Corrupt`] for an entry over 64 KiB.
pub fn encode(entries: &BTreeMap<String, Vec<u8>>) -> Result<Vec<Vec<u8>>, StoreError> {
    let mut body = Vec::new();
    for (label, value) in entries {
        for field in [label.as_bytes(), value.as_slice()] {
            let len = u16::try_from(field.len()).map_err(|_| StoreError::Corrupt("entry"))?;
            body.extend_from_slice(&len.to_be_bytes());
            body.extend_from_slice(field);
        }
    }
    let mut blob = MAGIC.to_vec();
    let total = u32::try_from(body.len()).map_err(|_| StoreError::Full(body.len()))?;
    blob.extend_from_slice(&total.to_be_bytes());
    blob.extend_from_slice(&body);
    if blob.len() > OBJECTS.len() * CHUNK {
        return Err(StoreError::Full(blob.len()));
    }
    Ok(blob.chunks(CHUNK).map(<[u8]>::to_vec).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_across_chunks() -> Result<(), StoreError> {
        let mut m = BTreeMap::new();
        for i in 0..30 {
            m.insert(format!("sigild/keyring/k{i}/1"), vec![i as u8; 200]);
        }
        m.insert(format!("{SLOT_PREFIX}82"), b"sigild/k/v1".to_vec());
        let chunks = encode(&m)?;
        assert!(chunks.len() > 1);
        assert_eq!(decode(&chunks.concat())?, m);
        assert!(decode(&[])?.is_empty());
        assert!(decode(b"XXXX").is_err());
        assert!(decode(&chunks.concat()[..100]).is_err());
        Ok(())
    }

    #[test]
    fn full_store_is_refused() {
        let mut m = BTreeMap::new();
        for i in 0..100 {
            m.insert(format!("r{i}"), vec![0u8; 200]);
        }
        assert!(matches!(encode(&m), Err(StoreError::Full(_))));
    }
}
