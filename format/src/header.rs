//! Block header layout, version 1 (all integers little-endian):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `KVTB` |
//! | 4 | 2 | format version |
//! | 6 | 2 | header length (payload starts here; a multiple of 16) |
//! | 8 | 1 | codec id |
//! | 9 | 1 | dtype id |
//! | 10 | 2 | flags (reserved, zero) |
//! | 12 | 16 | n_layers, n_kv_heads, block_tokens, head_dim (u32 each) |
//! | 28 | 8 | payload length |
//! | 36 | 4 | CRC32C of the payload |
//! | 40 | 32 | namespace fingerprint |
//! | 72 | 4 × n_layers | offset of each layer's bytes within the payload |
//! | 72 + 4L | 4 | CRC32C of every header byte before it |
//!
//! Zero padding follows up to the header length.

use crate::{BlockShape, DType, FormatError, KEY_LEN};

/// First four bytes of every block.
pub const MAGIC: [u8; 4] = *b"KVTB";
/// The block format version this build writes and reads.
pub const FORMAT_VERSION: u16 = 1;

const FIXED_LEN: usize = 72;

/// How the payload is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    /// The raw tensors, bit for bit.
    None,
}

impl Codec {
    fn to_id(self) -> u8 {
        match self {
            Codec::None => 0,
        }
    }

    fn from_id(id: u8) -> Result<Self, FormatError> {
        match id {
            0 => Ok(Codec::None),
            other => Err(FormatError::UnknownCodec(other)),
        }
    }
}

fn header_len(n_layers: u32) -> usize {
    (FIXED_LEN + 4 * n_layers as usize + 4).next_multiple_of(16)
}

/// Encodes raw tensors (layout `[layer][K|V][kv_head][token][head_dim]`) as a block with
/// codec `none`.
pub fn encode_block(
    fingerprint: &[u8; KEY_LEN],
    shape: &BlockShape,
    raw: &[u8],
) -> Result<Vec<u8>, FormatError> {
    shape.validate()?;
    if raw.len() != shape.raw_bytes() {
        return Err(FormatError::RawLength {
            expected: shape.raw_bytes(),
            found: raw.len(),
        });
    }
    let hlen = header_len(shape.n_layers);
    let mut out = Vec::with_capacity(hlen + raw.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(hlen as u16).to_le_bytes());
    out.push(Codec::None.to_id());
    out.push(shape.dtype.to_id());
    out.extend_from_slice(&0u16.to_le_bytes());
    for dim in [
        shape.n_layers,
        shape.n_kv_heads,
        shape.block_tokens,
        shape.head_dim,
    ] {
        out.extend_from_slice(&dim.to_le_bytes());
    }
    out.extend_from_slice(&(raw.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(raw).to_le_bytes());
    out.extend_from_slice(fingerprint);
    let layer_bytes = shape.layer_bytes();
    for layer in 0..shape.n_layers as usize {
        out.extend_from_slice(&((layer * layer_bytes) as u32).to_le_bytes());
    }
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out.resize(hlen, 0);
    out.extend_from_slice(raw);
    Ok(out)
}

/// A parsed block borrowing its bytes. Parsing checks the structure and the header
/// checksum; the payload checksum is checked by [`BlockView::verify_payload`].
#[derive(Debug, Clone)]
pub struct BlockView<'a> {
    pub codec: Codec,
    pub shape: BlockShape,
    pub fingerprint: [u8; KEY_LEN],
    pub payload_crc: u32,
    layer_offsets: Vec<u32>,
    payload: &'a [u8],
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(word)
}

impl<'a> BlockView<'a> {
    /// Parses a block, checking everything except the payload checksum.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, FormatError> {
        if bytes.len() < FIXED_LEN {
            return Err(FormatError::Truncated {
                len: bytes.len(),
                need: FIXED_LEN,
            });
        }
        if bytes[..4] != MAGIC {
            return Err(FormatError::BadMagic);
        }
        let version = u16_at(bytes, 4);
        if version != FORMAT_VERSION {
            return Err(FormatError::UnsupportedVersion {
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        let n_layers = u32_at(bytes, 12);
        let crc_at = FIXED_LEN
            .checked_add(4 * n_layers as usize)
            .ok_or(FormatError::BadShape("n_layers overflows"))?;
        let hlen = header_len(n_layers);
        if bytes.len() < hlen || u16_at(bytes, 6) as usize != hlen {
            return Err(FormatError::Truncated {
                len: bytes.len(),
                need: hlen,
            });
        }
        if crc32c::crc32c(&bytes[..crc_at]) != u32_at(bytes, crc_at) {
            return Err(FormatError::HeaderChecksum);
        }
        let shape = BlockShape {
            n_layers,
            n_kv_heads: u32_at(bytes, 16),
            block_tokens: u32_at(bytes, 20),
            head_dim: u32_at(bytes, 24),
            dtype: DType::from_id(bytes[9])?,
        };
        shape.validate()?;
        let codec = Codec::from_id(bytes[8])?;
        let payload = &bytes[hlen..];
        let expected = u64_at(bytes, 28);
        if payload.len() as u64 != expected {
            return Err(FormatError::PayloadLength {
                expected,
                found: payload.len() as u64,
            });
        }
        let layer_offsets: Vec<u32> = (0..n_layers as usize)
            .map(|i| u32_at(bytes, FIXED_LEN + 4 * i))
            .collect();
        check_offsets(&layer_offsets, payload.len())?;
        let mut fingerprint = [0u8; KEY_LEN];
        fingerprint.copy_from_slice(&bytes[40..72]);
        let view = BlockView {
            codec,
            shape,
            fingerprint,
            payload_crc: u32_at(bytes, 36),
            layer_offsets,
            payload,
        };
        if view.codec == Codec::None && payload.len() != shape.raw_bytes() {
            return Err(FormatError::PayloadLength {
                expected: shape.raw_bytes() as u64,
                found: payload.len() as u64,
            });
        }
        Ok(view)
    }

    /// Checks the payload against its CRC32C.
    pub fn verify_payload(&self) -> Result<(), FormatError> {
        let computed = crc32c::crc32c(self.payload);
        if computed != self.payload_crc {
            return Err(FormatError::PayloadChecksum {
                stored: self.payload_crc,
                computed,
            });
        }
        Ok(())
    }

    /// The encoded payload.
    pub fn payload(&self) -> &'a [u8] {
        self.payload
    }

    /// The encoded bytes of one layer (K then V).
    pub fn layer(&self, layer: usize) -> &'a [u8] {
        let start = self.layer_offsets[layer] as usize;
        let end = self
            .layer_offsets
            .get(layer + 1)
            .map_or(self.payload.len(), |&next| next as usize);
        &self.payload[start..end]
    }

    /// Decodes the payload into raw tensors.
    pub fn decode_into(&self, out: &mut Vec<u8>) -> Result<(), FormatError> {
        match self.codec {
            Codec::None => out.extend_from_slice(self.payload),
        }
        Ok(())
    }
}

fn check_offsets(offsets: &[u32], payload_len: usize) -> Result<(), FormatError> {
    let starts_at_zero = offsets.first() == Some(&0);
    let increasing = offsets.windows(2).all(|pair| pair[0] <= pair[1]);
    let inside = offsets
        .last()
        .is_some_and(|&last| last as usize <= payload_len);
    if starts_at_zero && increasing && inside {
        Ok(())
    } else {
        Err(FormatError::LayerOffsets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> BlockShape {
        BlockShape {
            n_layers: 3,
            n_kv_heads: 2,
            block_tokens: 4,
            head_dim: 8,
            dtype: DType::F32,
        }
    }

    fn raw(shape: &BlockShape) -> Vec<u8> {
        (0..shape.raw_bytes())
            .map(|i| (i * 7 % 251) as u8)
            .collect()
    }

    #[test]
    fn encode_then_parse_round_trips_every_field() {
        let shape = shape();
        let raw = raw(&shape);
        let block = encode_block(&[9; KEY_LEN], &shape, &raw).unwrap();
        let view = BlockView::parse(&block).unwrap();
        view.verify_payload().unwrap();
        assert_eq!(view.shape, shape);
        assert_eq!(view.fingerprint, [9; KEY_LEN]);
        assert_eq!(view.payload(), &raw[..]);
        assert_eq!(
            view.layer(1),
            &raw[shape.layer_bytes()..2 * shape.layer_bytes()]
        );
        let mut decoded = Vec::new();
        view.decode_into(&mut decoded).unwrap();
        assert_eq!(decoded, raw);
    }

    #[test]
    fn flipped_payload_byte_fails_verification() {
        let shape = shape();
        let mut block = encode_block(&[1; KEY_LEN], &shape, &raw(&shape)).unwrap();
        let last = block.len() - 1;
        block[last] ^= 0x40;
        let view = BlockView::parse(&block).unwrap();
        assert!(matches!(
            view.verify_payload(),
            Err(FormatError::PayloadChecksum { .. })
        ));
    }

    #[test]
    fn flipped_header_byte_is_refused() {
        let shape = shape();
        let mut block = encode_block(&[1; KEY_LEN], &shape, &raw(&shape)).unwrap();
        block[50] ^= 1;
        assert_eq!(
            BlockView::parse(&block).unwrap_err(),
            FormatError::HeaderChecksum
        );
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let shape = shape();
        let block = encode_block(&[1; KEY_LEN], &shape, &raw(&shape)).unwrap();
        for len in 0..block.len() {
            assert!(
                BlockView::parse(&block[..len]).is_err(),
                "length {len} parsed"
            );
        }
    }

    #[test]
    fn raw_of_the_wrong_length_is_refused() {
        let err = encode_block(&[0; KEY_LEN], &shape(), &[0u8; 10]).unwrap_err();
        assert!(matches!(err, FormatError::RawLength { found: 10, .. }));
    }
}
