//! Writing blocks and reading them back.
//!
//! A reader calls [`BlockView::parse`] (structure, codec and header checksum), then
//! [`BlockView::verify_payload`] before trusting any decoded byte, then either
//! [`BlockView::decoded`] for the whole block or [`BlockView::decode_layer`] once per layer
//! to stream. Decoding never panics or reads out of bounds on malformed bytes, with or
//! without the checksum check; it only guarantees correct data after that check.

use std::borrow::Cow;

use crate::codec::{needs_wide_scales, CodecSpec, LayerCoder};
use crate::header::{header_len, Header};
use crate::{BlockShape, FormatError, KEY_LEN};

/// Encodes raw tensors (layout `[layer][K|V][kv_head][token][head_dim]`, little-endian
/// elements of `shape.dtype`) as a block with codec `none`.
pub fn encode_block(
    fingerprint: &[u8; KEY_LEN],
    shape: &BlockShape,
    raw: &[u8],
) -> Result<Vec<u8>, FormatError> {
    encode_block_with(fingerprint, shape, raw, &CodecSpec::NONE)
}

/// Encodes raw tensors (as for [`encode_block`]) with `codec`, each layer on its own.
pub fn encode_block_with(
    fingerprint: &[u8; KEY_LEN],
    shape: &BlockShape,
    raw: &[u8],
    codec: &CodecSpec,
) -> Result<Vec<u8>, FormatError> {
    shape.validate()?;
    codec.validate()?;
    if raw.len() != shape.raw_bytes() {
        return Err(FormatError::RawLength {
            expected: shape.raw_bytes(),
            found: raw.len(),
        });
    }
    let wide_scales = needs_wide_scales(codec, shape, raw)?;
    let coder = LayerCoder::new(shape, codec, wide_scales);
    let hlen = header_len(shape.n_layers);
    let mut out = Vec::with_capacity(hlen + coder.stage_len() * shape.n_layers as usize);
    out.resize(hlen, 0);
    let mut layer_offsets = Vec::with_capacity(shape.n_layers as usize);
    let mut scratch = Vec::new();
    for layer in raw.chunks_exact(shape.layer_bytes()) {
        let offset = u32::try_from(out.len() - hlen)
            .map_err(|_| FormatError::BadShape("encoded payload exceeds 4 GiB"))?;
        layer_offsets.push(offset);
        coder.encode(layer, &mut scratch, &mut out)?;
    }
    let (head, payload) = out.split_at_mut(hlen);
    let header = Header {
        codec: *codec,
        wide_scales,
        shape: *shape,
        payload_len: payload.len() as u64,
        payload_crc: crc32c::crc32c(payload),
        fingerprint: *fingerprint,
        layer_offsets,
    };
    header.write(head);
    Ok(out)
}

/// A parsed block borrowing its bytes. Parsing checks the structure and the header
/// checksum; the payload checksum is checked by [`BlockView::verify_payload`].
#[derive(Debug, Clone)]
pub struct BlockView<'a> {
    pub codec: CodecSpec,
    pub shape: BlockShape,
    pub fingerprint: [u8; KEY_LEN],
    pub payload_crc: u32,
    wide_scales: bool,
    layer_offsets: Vec<u32>,
    payload: &'a [u8],
}

impl<'a> BlockView<'a> {
    /// Parses a block, checking everything except the payload checksum.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, FormatError> {
        let (header, hlen) = Header::read(bytes)?;
        let payload = &bytes[hlen..];
        if payload.len() as u64 != header.payload_len {
            return Err(FormatError::PayloadLength {
                expected: header.payload_len,
                found: payload.len() as u64,
            });
        }
        check_offsets(&header.layer_offsets, payload.len())?;
        let view = BlockView {
            codec: header.codec,
            shape: header.shape,
            fingerprint: header.fingerprint,
            payload_crc: header.payload_crc,
            wide_scales: header.wide_scales,
            layer_offsets: header.layer_offsets,
            payload,
        };
        let coder = view.coder();
        if coder.is_fixed_length() {
            let expected = coder.stage_len() as u64 * u64::from(view.shape.n_layers);
            if payload.len() as u64 != expected {
                return Err(FormatError::PayloadLength {
                    expected,
                    found: payload.len() as u64,
                });
            }
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
    ///
    /// # Panics
    ///
    /// When `layer >= shape.n_layers`.
    pub fn layer(&self, layer: usize) -> &'a [u8] {
        let start = self.layer_offsets[layer] as usize;
        let end = self
            .layer_offsets
            .get(layer + 1)
            .map_or(self.payload.len(), |&next| next as usize);
        &self.payload[start..end]
    }

    /// The raw tensors, borrowed when the codec stores them as they are.
    pub fn decoded(&self) -> Result<Cow<'a, [u8]>, FormatError> {
        if self.codec == CodecSpec::NONE {
            return Ok(Cow::Borrowed(self.payload));
        }
        let coder = self.coder();
        for layer in 0..self.layer_offsets.len() {
            coder.check(layer, self.layer(layer).len())?;
        }
        let mut raw = vec![0u8; self.shape.raw_bytes()];
        let mut scratch = Vec::new();
        for (layer, out) in raw.chunks_exact_mut(self.shape.layer_bytes()).enumerate() {
            coder.decode(layer, self.layer(layer), &mut scratch, out)?;
        }
        Ok(Cow::Owned(raw))
    }

    /// Decodes one layer's raw K and V into `out` (`shape.layer_bytes()` long).
    pub fn decode_layer(&self, layer: usize, out: &mut [u8]) -> Result<(), FormatError> {
        if layer >= self.layer_offsets.len() {
            return Err(FormatError::LayerIndex {
                layer,
                n_layers: self.shape.n_layers,
            });
        }
        if out.len() != self.shape.layer_bytes() {
            return Err(FormatError::OutputLength {
                expected: self.shape.layer_bytes(),
                found: out.len(),
            });
        }
        self.coder()
            .decode(layer, self.layer(layer), &mut Vec::new(), out)
    }

    fn coder(&self) -> LayerCoder {
        LayerCoder::new(&self.shape, &self.codec, self.wide_scales)
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
    use crate::DType;

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
        assert_eq!(view.codec, CodecSpec::NONE);
        assert_eq!(view.shape, shape);
        assert_eq!(view.fingerprint, [9; KEY_LEN]);
        assert_eq!(view.payload(), &raw[..]);
        assert_eq!(
            view.layer(1),
            &raw[shape.layer_bytes()..2 * shape.layer_bytes()]
        );
        assert!(matches!(view.decoded().unwrap(), Cow::Borrowed(b) if b == &raw[..]));
    }

    #[test]
    fn codec_and_parameters_survive_the_header() {
        let shape = shape();
        let raw = vec![0u8; shape.raw_bytes()];
        for codec in [
            CodecSpec::zstd(-3).shuffled(),
            CodecSpec::int4(17).then_zstd(5),
            CodecSpec::fp8(),
        ] {
            let block = encode_block_with(&[2; KEY_LEN], &shape, &raw, &codec).unwrap();
            assert_eq!(BlockView::parse(&block).unwrap().codec, codec);
        }
    }

    #[test]
    fn layers_decode_one_at_a_time() {
        let shape = shape();
        let raw = raw(&shape);
        let block =
            encode_block_with(&[1; KEY_LEN], &shape, &raw, &CodecSpec::lz4().shuffled()).unwrap();
        let view = BlockView::parse(&block).unwrap();
        let mut layer = vec![0u8; shape.layer_bytes()];
        for (i, expected) in raw.chunks_exact(shape.layer_bytes()).enumerate() {
            view.decode_layer(i, &mut layer).unwrap();
            assert_eq!(layer, expected);
        }
        assert!(matches!(
            view.decode_layer(3, &mut layer),
            Err(FormatError::LayerIndex { layer: 3, .. })
        ));
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

    #[test]
    fn lossy_codecs_refuse_nan() {
        let shape = shape();
        let mut raw = vec![0u8; shape.raw_bytes()];
        raw[4..8].copy_from_slice(&f32::NAN.to_le_bytes());
        for codec in [CodecSpec::int8(), CodecSpec::fp8(), CodecSpec::int4(32)] {
            let err = encode_block_with(&[0; KEY_LEN], &shape, &raw, &codec).unwrap_err();
            assert_eq!(err, FormatError::NotFinite);
        }
        encode_block_with(&[0; KEY_LEN], &shape, &raw, &CodecSpec::lz4()).unwrap();
    }
}
