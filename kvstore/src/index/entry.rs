//! One index record: where a durable block lives and what the policy knows about it.
//!
//! Encoding, version 1, little-endian: version u8, codec u8, location (segment u64, offset
//! u64, length u32), checksum u32, raw_bytes u32, position u32, has_parent u8, parent [32],
//! created_ms u64, last_access_ms u64, hits u32, lease_until_ms u64, conversation length
//! u16 and its UTF-8 bytes. Readers refuse other versions instead of guessing.

use crate::tier::ssd::Location;
use crate::Key;

/// Version of the entry encoding.
pub const ENTRY_VERSION: u8 = 1;
const FIXED_LEN: usize = 1 + 1 + Location::ENCODED_LEN + 4 + 4 + 4 + 1 + 32 + 8 + 8 + 4 + 8 + 2;

/// Where a block's durable copy lives and its policy state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    pub codec: u8,
    pub location: Location,
    /// CRC32C of the block's payload, as its header states it.
    pub checksum: u32,
    /// Size of the decoded tensors.
    pub raw_bytes: u32,
    pub position: u32,
    pub parent: Option<Key>,
    pub created_ms: u64,
    pub last_access_ms: u64,
    pub hits: u32,
    /// A pin holds the block until this time (0: not pinned).
    pub lease_until_ms: u64,
    pub conversation: String,
}

/// Why an entry could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    #[error("index entry version {0} is not supported (this build reads {ENTRY_VERSION})")]
    Version(u8),
    #[error("index entry is truncated")]
    Truncated,
}

impl IndexEntry {
    pub fn encode(&self) -> Vec<u8> {
        let conversation = truncate_utf8(&self.conversation, u16::MAX as usize);
        let mut out = Vec::with_capacity(FIXED_LEN + conversation.len());
        out.push(ENTRY_VERSION);
        out.push(self.codec);
        out.extend_from_slice(&self.location.encode());
        out.extend_from_slice(&self.checksum.to_le_bytes());
        out.extend_from_slice(&self.raw_bytes.to_le_bytes());
        out.extend_from_slice(&self.position.to_le_bytes());
        out.push(self.parent.is_some() as u8);
        out.extend_from_slice(&self.parent.unwrap_or([0; 32]));
        out.extend_from_slice(&self.created_ms.to_le_bytes());
        out.extend_from_slice(&self.last_access_ms.to_le_bytes());
        out.extend_from_slice(&self.hits.to_le_bytes());
        out.extend_from_slice(&self.lease_until_ms.to_le_bytes());
        out.extend_from_slice(&(conversation.len() as u16).to_le_bytes());
        out.extend_from_slice(conversation.as_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, EntryError> {
        let mut r = Reader { bytes, at: 0 };
        let version = r.u8()?;
        if version != ENTRY_VERSION {
            return Err(EntryError::Version(version));
        }
        let codec = r.u8()?;
        let location =
            Location::decode(r.take(Location::ENCODED_LEN)?).ok_or(EntryError::Truncated)?;
        let checksum = r.u32()?;
        let raw_bytes = r.u32()?;
        let position = r.u32()?;
        let has_parent = r.u8()? != 0;
        let parent_bytes = r.key()?;
        let created_ms = r.u64()?;
        let last_access_ms = r.u64()?;
        let hits = r.u32()?;
        let lease_until_ms = r.u64()?;
        let conversation_len = r.u16()? as usize;
        let conversation = String::from_utf8_lossy(r.take(conversation_len)?).into_owned();
        Ok(IndexEntry {
            codec,
            location,
            checksum,
            raw_bytes,
            position,
            parent: has_parent.then_some(parent_bytes),
            created_ms,
            last_access_ms,
            hits,
            lease_until_ms,
            conversation,
        })
    }
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], EntryError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or(EntryError::Truncated)?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], EntryError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, EntryError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, EntryError> {
        self.array().map(u16::from_le_bytes)
    }

    fn u32(&mut self) -> Result<u32, EntryError> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, EntryError> {
        self.array().map(u64::from_le_bytes)
    }

    fn key(&mut self) -> Result<Key, EntryError> {
        self.array()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> IndexEntry {
        IndexEntry {
            codec: 2,
            location: Location {
                segment: 7,
                offset: 1 << 33,
                len: 4096,
            },
            checksum: 0xdead_beef,
            raw_bytes: 8192,
            position: 3,
            parent: Some([5; 32]),
            created_ms: 10,
            last_access_ms: 20,
            hits: 4,
            lease_until_ms: 0,
            conversation: "chat-42".into(),
        }
    }

    #[test]
    fn entries_round_trip() {
        let e = entry();
        assert_eq!(IndexEntry::decode(&e.encode()).unwrap(), e);
        let root = IndexEntry {
            parent: None,
            conversation: String::new(),
            ..entry()
        };
        assert_eq!(IndexEntry::decode(&root.encode()).unwrap(), root);
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = entry().encode();
        for len in 0..bytes.len() {
            assert!(IndexEntry::decode(&bytes[..len]).is_err());
        }
    }

    #[test]
    fn another_version_is_refused() {
        let mut bytes = entry().encode();
        bytes[0] = 9;
        assert_eq!(IndexEntry::decode(&bytes), Err(EntryError::Version(9)));
    }
}
