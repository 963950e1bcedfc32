//! Block header layout, version 2 (all integers little-endian):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `KVTB` |
//! | 4 | 2 | format version |
//! | 6 | 2 | header length (payload starts here; a multiple of 16) |
//! | 8 | 1 | transform id: 0 none, 1 shuffle, 2 int8, 3 fp8, 4 int4 |
//! | 9 | 1 | dtype id: 1 f32, 2 f16, 3 bf16 |
//! | 10 | 1 | entropy coder id: 0 none, 1 lz4, 2 zstd |
//! | 11 | 1 | zstd level (i8; zero for other coders; informational) |
//! | 12 | 16 | n_layers, n_kv_heads, block_tokens, head_dim (u32 each) |
//! | 28 | 8 | payload length |
//! | 36 | 4 | CRC32C of the payload |
//! | 40 | 32 | namespace fingerprint |
//! | 72 | 2 | int4 group size (zero for other transforms) |
//! | 74 | 1 | scale width of int8/int4: 0 narrow (f16 offsets), 1 f32; zero otherwise |
//! | 75 | 1 | reserved, zero |
//! | 76 | 4 × n_layers | offset of each layer's encoded bytes within the payload |
//! | 76 + 4L | 4 | CRC32C of every header byte before it |
//!
//! Zero padding follows up to the header length. Version 1 had no codec parameters
//! (bytes 10-11 were reserved flags and the layer offsets started at 72).

use crate::codec::{CodecSpec, Entropy, Transform};
use crate::{BlockShape, DType, FormatError, KEY_LEN};

/// First four bytes of every block.
pub const MAGIC: [u8; 4] = *b"KVTB";
/// The block format version this build writes and reads.
pub const FORMAT_VERSION: u16 = 2;

const FIXED_LEN: usize = 76;

/// Everything a header holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) codec: CodecSpec,
    pub(crate) wide_scales: bool,
    pub(crate) shape: BlockShape,
    pub(crate) payload_len: u64,
    pub(crate) payload_crc: u32,
    pub(crate) fingerprint: [u8; KEY_LEN],
    pub(crate) layer_offsets: Vec<u32>,
}

/// The header length of a block with `n_layers` layers.
pub(crate) fn header_len(n_layers: u32) -> usize {
    (FIXED_LEN + 4 * n_layers as usize + 4).next_multiple_of(16)
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

impl Header {
    /// Writes the header into `out`, which is exactly `header_len(n_layers)` bytes.
    pub(crate) fn write(&self, out: &mut [u8]) {
        let hlen = header_len(self.shape.n_layers);
        debug_assert_eq!(out.len(), hlen);
        out.fill(0);
        out[..4].copy_from_slice(&MAGIC);
        out[4..6].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        out[6..8].copy_from_slice(&(hlen as u16).to_le_bytes());
        let (transform, group) = transform_id(self.codec.transform);
        let (entropy, level) = entropy_id(self.codec.entropy);
        out[8] = transform;
        out[9] = self.shape.dtype.to_id();
        out[10] = entropy;
        out[11] = level as u8;
        let dims = [
            self.shape.n_layers,
            self.shape.n_kv_heads,
            self.shape.block_tokens,
            self.shape.head_dim,
        ];
        for (i, dim) in dims.iter().enumerate() {
            out[12 + 4 * i..16 + 4 * i].copy_from_slice(&dim.to_le_bytes());
        }
        out[28..36].copy_from_slice(&self.payload_len.to_le_bytes());
        out[36..40].copy_from_slice(&self.payload_crc.to_le_bytes());
        out[40..72].copy_from_slice(&self.fingerprint);
        out[72..74].copy_from_slice(&group.to_le_bytes());
        out[74] = u8::from(self.wide_scales);
        for (i, offset) in self.layer_offsets.iter().enumerate() {
            out[FIXED_LEN + 4 * i..FIXED_LEN + 4 * i + 4].copy_from_slice(&offset.to_le_bytes());
        }
        let crc_at = FIXED_LEN + 4 * self.layer_offsets.len();
        let crc = crc32c::crc32c(&out[..crc_at]);
        out[crc_at..crc_at + 4].copy_from_slice(&crc.to_le_bytes());
    }

    /// Reads and checks a header; returns it with its length.
    pub(crate) fn read(bytes: &[u8]) -> Result<(Header, usize), FormatError> {
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
        let hlen = header_len(n_layers);
        if bytes.len() < hlen {
            return Err(FormatError::Truncated {
                len: bytes.len(),
                need: hlen,
            });
        }
        let found = u16_at(bytes, 6);
        if usize::from(found) != hlen {
            return Err(FormatError::HeaderLength {
                found,
                expected: hlen,
            });
        }
        let crc_at = FIXED_LEN + 4 * n_layers as usize;
        if crc32c::crc32c(&bytes[..crc_at]) != u32_at(bytes, crc_at) {
            return Err(FormatError::HeaderChecksum);
        }
        if bytes[crc_at + 4..hlen].iter().any(|&b| b != 0) {
            return Err(FormatError::HeaderPadding);
        }
        let header = Header {
            codec: read_codec(bytes)?,
            wide_scales: read_scale_width(bytes)?,
            shape: read_shape(bytes)?,
            payload_len: u64_at(bytes, 28),
            payload_crc: u32_at(bytes, 36),
            fingerprint: read_fingerprint(bytes),
            layer_offsets: (0..n_layers as usize)
                .map(|i| u32_at(bytes, FIXED_LEN + 4 * i))
                .collect(),
        };
        let affine = matches!(
            header.codec.transform,
            Transform::Int8 | Transform::Int4 { .. }
        );
        if header.wide_scales && !affine {
            return Err(FormatError::BadCodecParams(
                "scale width set for a codec without scales",
            ));
        }
        Ok((header, hlen))
    }
}

fn read_fingerprint(bytes: &[u8]) -> [u8; KEY_LEN] {
    let mut fingerprint = [0u8; KEY_LEN];
    fingerprint.copy_from_slice(&bytes[40..72]);
    fingerprint
}

fn read_shape(bytes: &[u8]) -> Result<BlockShape, FormatError> {
    let shape = BlockShape {
        n_layers: u32_at(bytes, 12),
        n_kv_heads: u32_at(bytes, 16),
        block_tokens: u32_at(bytes, 20),
        head_dim: u32_at(bytes, 24),
        dtype: DType::from_id(bytes[9])?,
    };
    shape.validate()?;
    Ok(shape)
}

fn read_scale_width(bytes: &[u8]) -> Result<bool, FormatError> {
    if bytes[75] != 0 {
        return Err(FormatError::BadCodecParams("reserved byte is not zero"));
    }
    match bytes[74] {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(FormatError::BadCodecParams("unknown scale width")),
    }
}

fn transform_id(transform: Transform) -> (u8, u16) {
    match transform {
        Transform::None => (0, 0),
        Transform::Shuffle => (1, 0),
        Transform::Int8 => (2, 0),
        Transform::Fp8 => (3, 0),
        Transform::Int4 { group } => (4, group),
    }
}

fn entropy_id(entropy: Entropy) -> (u8, i8) {
    match entropy {
        Entropy::None => (0, 0),
        Entropy::Lz4 => (1, 0),
        Entropy::Zstd { level } => (2, level),
    }
}

fn read_codec(bytes: &[u8]) -> Result<CodecSpec, FormatError> {
    let group = u16_at(bytes, 72);
    let transform = match (bytes[8], group) {
        (0, 0) => Transform::None,
        (1, 0) => Transform::Shuffle,
        (2, 0) => Transform::Int8,
        (3, 0) => Transform::Fp8,
        (4, g) => Transform::Int4 { group: g },
        (0..=3, _) => {
            return Err(FormatError::BadCodecParams(
                "group size on a codec without groups",
            ))
        }
        (other, _) => return Err(FormatError::UnknownCodec(other)),
    };
    let level = bytes[11] as i8;
    let entropy = match (bytes[10], level) {
        (0, 0) => Entropy::None,
        (1, 0) => Entropy::Lz4,
        (2, level) => Entropy::Zstd { level },
        (0 | 1, _) => {
            return Err(FormatError::BadCodecParams(
                "level on a coder without levels",
            ))
        }
        (other, _) => return Err(FormatError::UnknownEntropy(other)),
    };
    let codec = CodecSpec::new(transform, entropy);
    codec.validate()?;
    Ok(codec)
}

/// Recomputes both checksums of a block whose bytes were altered on purpose, so tests and
/// fuzzers can reach the decoder with arbitrary header fields and payloads. Leaves alone
/// what it cannot locate.
#[doc(hidden)]
pub fn reseal(block: &mut [u8]) {
    if block.len() < FIXED_LEN {
        return;
    }
    let hlen = usize::from(u16_at(block, 6));
    if hlen <= block.len() {
        let crc = crc32c::crc32c(&block[hlen..]);
        block[36..40].copy_from_slice(&crc.to_le_bytes());
    }
    let crc_at = FIXED_LEN + 4 * u32_at(block, 12) as usize;
    if crc_at + 4 <= block.len() {
        let crc = crc32c::crc32c(&block[..crc_at]);
        block[crc_at..crc_at + 4].copy_from_slice(&crc.to_le_bytes());
    }
}
