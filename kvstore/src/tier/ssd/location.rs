//! Where a record lives, in the form the index stores.

use super::record::record_bytes;

/// A record's place in the log: segment id, byte offset of its header, payload length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Location {
    pub segment: u64,
    pub offset: u64,
    pub len: u32,
}

impl Location {
    /// Size of [`Location::encode`]'s output.
    pub const ENCODED_LEN: usize = 20;

    /// Bytes the record occupies on disk: header, payload and padding.
    pub fn disk_bytes(&self) -> u64 {
        record_bytes(self.len)
    }

    /// Segment, offset and length, little-endian, for an index value.
    pub fn encode(&self) -> [u8; Self::ENCODED_LEN] {
        let mut out = [0u8; Self::ENCODED_LEN];
        out[0..8].copy_from_slice(&self.segment.to_le_bytes());
        out[8..16].copy_from_slice(&self.offset.to_le_bytes());
        out[16..20].copy_from_slice(&self.len.to_le_bytes());
        out
    }

    /// The inverse of [`Location::encode`]; None for input of the wrong length.
    pub fn decode(bytes: &[u8]) -> Option<Location> {
        let bytes: &[u8; Self::ENCODED_LEN] = bytes.try_into().ok()?;
        let (segment, rest) = bytes.split_at(8);
        let (offset, len) = rest.split_at(8);
        Some(Location {
            segment: u64::from_le_bytes(segment.try_into().ok()?),
            offset: u64::from_le_bytes(offset.try_into().ok()?),
            len: u32::from_le_bytes(len.try_into().ok()?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_round_trip_through_their_encoding() {
        let location = Location {
            segment: 3,
            offset: 1 << 40,
            len: 77,
        };
        assert_eq!(Location::decode(&location.encode()), Some(location));
        assert_eq!(Location::decode(&[0; 19]), None);
        assert_eq!(location.disk_bytes(), 4096);
    }
}
