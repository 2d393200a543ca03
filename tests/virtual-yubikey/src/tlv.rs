//! BER-TLV as the PIV applet speaks it: one- or two-byte tags, minimal definite lengths.
//!
//! Owns encoding and parsing of tag-length-value items. Depends on nothing else in the crate.
//! Must never panic on card input: every parse returns `None` on malformed data, and callers
//! map that to a status word.

/// Appends `tag ‖ len ‖ value` to `out`, using the minimal length encoding (`81`/`82` forms),
/// exactly as a YubiKey does. Clients such as the `yubikey` crate parse replies at fixed
/// offsets, so the minimal form is part of the wire contract.
pub fn push(out: &mut Vec<u8>, tag: u16, value: &[u8]) {
    if tag > 0xFF {
        out.extend_from_slice(&tag.to_be_bytes());
    } else {
        out.push(tag as u8);
    }
    push_len(out, value.len());
    out.extend_from_slice(value);
}

/// Returns one encoded TLV item.
pub fn item(tag: u16, value: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(value.len() + 5);
    push(&mut v, tag, value);
    v
}

/// Appends a minimal BER definite length.
pub fn push_len(out: &mut Vec<u8>, len: usize) {
    match len {
        0..=0x7F => out.push(len as u8),
        0x80..=0xFF => out.extend_from_slice(&[0x81, len as u8]),
        0x100..=0xFFFF => {
            out.push(0x82);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(0x83);
            out.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
        }
    }
}

/// Parses a BER length at the start of `buf`: returns (length, bytes consumed).
pub fn parse_len(buf: &[u8]) -> Option<(usize, usize)> {
    let first = *buf.first()?;
    match first {
        0x00..=0x7F => Some((first as usize, 1)),
        0x81 => Some((*buf.get(1)? as usize, 2)),
        0x82 => match buf.get(1..3)? {
            [a, b] => Some(((*a as usize) << 8 | *b as usize, 3)),
            _ => None,
        },
        0x83 => match buf.get(1..4)? {
            [a, b, c] => Some(((*a as usize) << 16 | (*b as usize) << 8 | *c as usize, 4)),
            _ => None,
        },
        _ => None,
    }
}

/// One parsed item borrowed from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tlv<'a> {
    /// The tag, one byte or two (`5F`/`7F` classes and other multi-byte first bytes).
    pub tag: u16,
    /// The value bytes.
    pub value: &'a [u8],
}

/// Parses one TLV at the start of `buf`: returns the item and the rest of the buffer.
pub fn parse_one(buf: &[u8]) -> Option<(Tlv<'_>, &[u8])> {
    let first = *buf.first()?;
    let (tag, tag_len) = if first & 0x1F == 0x1F {
        // Two-byte tag (the PIV applet never uses three-byte tags on the wire except 5FC1xx
        // object ids, which travel inside a 5C value and are not parsed as tags).
        (u16::from_be_bytes([first, *buf.get(1)?]), 2)
    } else {
        (first as u16, 1)
    };
    let (len, len_len) = parse_len(buf.get(tag_len..)?)?;
    let start = tag_len + len_len;
    let value = buf.get(start..start.checked_add(len)?)?;
    let rest = buf.get(start + len..)?;
    Some((Tlv { tag, value }, rest))
}

/// Parses a buffer that consists only of TLVs. `None` if anything is malformed.
pub fn parse_all(mut buf: &[u8]) -> Option<Vec<Tlv<'_>>> {
    let mut items = Vec::new();
    while !buf.is_empty() {
        let (item, rest) = parse_one(buf)?;
        items.push(item);
        buf = rest;
    }
    Some(items)
}

/// Finds the first value with `tag` among `items`.
pub fn find<'a>(items: &[Tlv<'a>], tag: u16) -> Option<&'a [u8]> {
    items.iter().find(|t| t.tag == tag).map(|t| t.value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_lengths() {
        assert_eq!(item(0x86, &[0; 0x41])[..2], [0x86, 0x41]);
        assert_eq!(item(0x81, &[0; 0x80])[..3], [0x81, 0x81, 0x80]);
        assert_eq!(
            item(0x7F49, &[0; 0x109])[..5],
            [0x7F, 0x49, 0x82, 0x01, 0x09]
        );
    }

    #[test]
    fn roundtrip_and_nesting() {
        let inner = [item(0x82, &[]), item(0x81, b"abc")].concat();
        let outer = item(0x7C, &inner);
        let (t, rest) = parse_one(&outer).unwrap();
        assert!(rest.is_empty());
        assert_eq!(t.tag, 0x7C);
        let items = parse_all(t.value).unwrap();
        assert_eq!(find(&items, 0x81), Some(&b"abc"[..]));
        assert_eq!(find(&items, 0x82), Some(&[][..]));
        assert_eq!(find(&items, 0x85), None);
    }

    #[test]
    fn malformed_is_none() {
        assert!(parse_one(&[]).is_none());
        assert!(parse_one(&[0x7C]).is_none());
        assert!(parse_one(&[0x7C, 0x05, 1, 2]).is_none());
        assert!(parse_one(&[0x7C, 0x84, 1, 2, 3, 4]).is_none());
        assert!(parse_one(&[0x7F]).is_none());
        assert!(parse_all(&[0x80, 0x01, 0x11, 0x81]).is_none());
    }
}
