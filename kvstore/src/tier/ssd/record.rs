//! The record format: a 64-byte header, the payload, zero padding to the next 4 KiB.
//!
//! ```text
//! offset  size  field
//!      0     4  magic "KVSR"
//!      4     2  format version (1)
//!      6     2  flags (0 in version 1; readers refuse other values)
//!      8     8  sequence number (u64, grows by one per append across the whole log)
//!     16    32  key
//!     48     4  payload length in bytes (u32)
//!     52     4  CRC32C of the payload
//!     56     4  reserved, zero
//!     60     4  CRC32C of bytes 0..60
//!     64     -  payload, then zeros up to a multiple of 4096
//! ```
//!
//! All integers are little-endian. The header checksum covers the payload checksum, so
//! together they cover header and payload; keeping them apart lets a scan trust the length
//! of a record whose payload is damaged and step over just that record.

use crate::Key;

use super::aligned::{align_up, AlignedBuf};

pub const RECORD_MAGIC: [u8; 4] = *b"KVSR";
pub const RECORD_VERSION: u16 = 1;
pub const HEADER_LEN: usize = 64;

const CRC_COVERED: usize = 60;

/// A decoded, checksum-verified record header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecordHeader {
    pub seq: u64,
    pub key: Key,
    pub len: u32,
    pub payload_crc: u32,
}

/// Why bytes are not a record header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeaderFault {
    Short,
    Magic,
    Version(u16),
    Flags(u16),
    Checksum,
}

/// Bytes a record with a `len`-byte payload occupies on disk.
pub(crate) fn record_bytes(len: u32) -> u64 {
    align_up(HEADER_LEN as u64 + u64::from(len))
}

pub(crate) fn payload_crc(payload: &[u8]) -> u32 {
    crc32c::crc32c(payload)
}

impl RecordHeader {
    pub(crate) fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..4].copy_from_slice(&RECORD_MAGIC);
        out[4..6].copy_from_slice(&RECORD_VERSION.to_le_bytes());
        out[8..16].copy_from_slice(&self.seq.to_le_bytes());
        out[16..48].copy_from_slice(&self.key);
        out[48..52].copy_from_slice(&self.len.to_le_bytes());
        out[52..56].copy_from_slice(&self.payload_crc.to_le_bytes());
        let crc = crc32c::crc32c(&out[..CRC_COVERED]);
        out[60..64].copy_from_slice(&crc.to_le_bytes());
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<RecordHeader, HeaderFault> {
        let Some(bytes) = bytes.get(..HEADER_LEN) else {
            return Err(HeaderFault::Short);
        };
        let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]);
        let u32_at = |at: usize| u32::from_le_bytes(le_array(&bytes[at..at + 4]));
        if bytes[0..4] != RECORD_MAGIC {
            return Err(HeaderFault::Magic);
        }
        let version = u16_at(4);
        if version != RECORD_VERSION {
            return Err(HeaderFault::Version(version));
        }
        if u32_at(60) != crc32c::crc32c(&bytes[..CRC_COVERED]) {
            return Err(HeaderFault::Checksum);
        }
        let flags = u16_at(6);
        if flags != 0 {
            return Err(HeaderFault::Flags(flags));
        }
        Ok(RecordHeader {
            seq: u64::from_le_bytes(le_array(&bytes[8..16])),
            key: le_array(&bytes[16..48]),
            len: u32_at(48),
            payload_crc: u32_at(52),
        })
    }

    /// True when `payload` is the one this header describes.
    pub(crate) fn matches_payload(&self, payload: &[u8]) -> bool {
        payload.len() == self.len as usize && payload_crc(payload) == self.payload_crc
    }
}

fn le_array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(bytes);
    out
}

/// Lays out a whole record in `buf` with sequence number 0; [`stamp_seq`] sets the real one
/// once the append order is known. Returns the header it wrote.
pub(crate) fn encode_record(buf: &mut AlignedBuf, key: &Key, payload: &[u8]) -> RecordHeader {
    let header = RecordHeader {
        seq: 0,
        key: *key,
        len: payload.len() as u32,
        payload_crc: payload_crc(payload),
    };
    buf.clear();
    buf.extend_from_slice(&header.encode());
    buf.extend_from_slice(payload);
    buf.pad_zeros(record_bytes(header.len) as usize);
    header
}

/// Rewrites the header of an encoded record with sequence number `seq`.
pub(crate) fn stamp_seq(buf: &mut AlignedBuf, header: &RecordHeader, seq: u64) {
    let stamped = RecordHeader { seq, ..*header };
    buf[..HEADER_LEN].copy_from_slice(&stamped.encode());
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    use super::*;

    fn sample() -> RecordHeader {
        RecordHeader {
            seq: 42,
            key: [9; 32],
            len: 5000,
            payload_crc: 0xdead_beef,
        }
    }

    #[test]
    fn header_round_trips() {
        let header = sample();
        assert_eq!(RecordHeader::decode(&header.encode()), Ok(header));
    }

    #[test]
    fn any_flipped_header_bit_is_refused() {
        let encoded = sample().encode();
        for bit in 0..HEADER_LEN * 8 {
            let mut damaged = encoded;
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(
                RecordHeader::decode(&damaged).is_err(),
                "bit {bit} went unnoticed"
            );
        }
    }

    #[test]
    fn arbitrary_bytes_decode_without_panicking() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for len in 0..200 {
            let mut bytes = vec![0u8; len];
            rng.fill(&mut bytes[..]);
            if len >= 4 {
                bytes[..4].copy_from_slice(&RECORD_MAGIC);
            }
            let _ = RecordHeader::decode(&bytes);
        }
        assert_eq!(RecordHeader::decode(&[0; 10]), Err(HeaderFault::Short));
    }

    #[test]
    fn records_are_padded_to_pages() {
        assert_eq!(record_bytes(0), 4096);
        assert_eq!(record_bytes(4032), 4096);
        assert_eq!(record_bytes(4033), 8192);
        let mut buf = AlignedBuf::with_capacity(8192);
        let header = encode_record(&mut buf, &[1; 32], &[5; 4033]);
        assert_eq!(buf.len(), 8192);
        stamp_seq(&mut buf, &header, 77);
        let decoded = RecordHeader::decode(&buf).unwrap();
        assert_eq!(decoded.seq, 77);
        assert!(decoded.matches_payload(&buf[HEADER_LEN..HEADER_LEN + 4033]));
    }
}
