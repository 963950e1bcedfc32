//! The lossless second stage: lz4 (lz4_flex block format) and zstd (one frame per layer, or
//! one per byte plane after the shuffle).
//!
//! Both decode into a buffer of exactly the size the transform produces, so a layer that
//! claims to expand to more is refused, and a block cannot make the reader allocate more
//! than its bytes could honestly expand to (see [`EntropyCoder::max_decoded_len`]).

use crate::FormatError;

/// A lossless byte-to-byte coder applied to one layer at a time.
pub(crate) trait EntropyCoder {
    /// Appends the compressed form of `src` to `out`.
    fn compress(&self, src: &[u8], out: &mut Vec<u8>) -> Result<(), FormatError>;

    /// As [`EntropyCoder::compress`], for `src` made of `planes` equal byte planes (the
    /// shuffle's output), which a coder may compress one by one as long as
    /// [`EntropyCoder::decompress`] reads the result as one stream.
    fn compress_planes(
        &self,
        src: &[u8],
        planes: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), FormatError> {
        let _ = planes;
        self.compress(src, out)
    }

    /// Fills `dst` exactly from `src`; a shorter, longer or malformed stream is an error.
    fn decompress(&self, src: &[u8], dst: &mut [u8]) -> Result<(), &'static str>;

    /// The most bytes `encoded_len` bytes of a well-formed stream can decode to.
    fn max_decoded_len(&self, encoded_len: usize) -> usize;
}

pub(crate) struct Lz4;

/// An lz4 sequence of `n` bytes can copy at most about 255 bytes for each of them (every
/// match-length extension byte adds 255).
const LZ4_MAX_EXPANSION: usize = 256;

impl EntropyCoder for Lz4 {
    fn compress(&self, src: &[u8], out: &mut Vec<u8>) -> Result<(), FormatError> {
        let start = out.len();
        out.resize(
            start + lz4_flex::block::get_maximum_output_size(src.len()),
            0,
        );
        let written = lz4_flex::block::compress_into(src, &mut out[start..])
            .map_err(|e| FormatError::Compress(e.to_string()))?;
        out.truncate(start + written);
        Ok(())
    }

    fn decompress(&self, src: &[u8], dst: &mut [u8]) -> Result<(), &'static str> {
        match lz4_flex::block::decompress_into(src, dst) {
            Ok(n) if n == dst.len() => Ok(()),
            Ok(_) => Err("lz4 stream is shorter than the layer"),
            Err(_) => Err("lz4 stream is malformed"),
        }
    }

    fn max_decoded_len(&self, encoded_len: usize) -> usize {
        encoded_len.saturating_mul(LZ4_MAX_EXPANSION)
    }
}

pub(crate) struct Zstd {
    pub(crate) level: i8,
}

/// A zstd block decodes to at most 128 KiB and takes at least 4 bytes (an RLE block).
const ZSTD_MAX_EXPANSION: usize = 32 * 1024;

impl EntropyCoder for Zstd {
    fn compress(&self, src: &[u8], out: &mut Vec<u8>) -> Result<(), FormatError> {
        let start = out.len();
        out.resize(start + zstd::zstd_safe::compress_bound(src.len()), 0);
        let written = zstd::bulk::compress_to_buffer(src, &mut out[start..], i32::from(self.level))
            .map_err(|e| FormatError::Compress(e.to_string()))?;
        out.truncate(start + written);
        Ok(())
    }

    /// One frame per plane: each gets its own literal statistics (zstd keeps one Huffman
    /// table per block of up to 128 KiB, so a layer smaller than that would otherwise mix
    /// the exponent bytes with the mantissa bytes). zstd decodes concatenated frames as one.
    fn compress_planes(
        &self,
        src: &[u8],
        planes: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), FormatError> {
        let plane_len = src.len() / planes.max(1);
        if plane_len == 0 {
            return self.compress(src, out);
        }
        for plane in src.chunks(plane_len) {
            self.compress(plane, out)?;
        }
        Ok(())
    }

    fn decompress(&self, src: &[u8], dst: &mut [u8]) -> Result<(), &'static str> {
        match zstd::bulk::decompress_to_buffer(src, dst) {
            Ok(n) if n == dst.len() => Ok(()),
            Ok(_) => Err("zstd stream is shorter than the layer"),
            Err(_) => Err("zstd stream is malformed or longer than the layer"),
        }
    }

    fn max_decoded_len(&self, encoded_len: usize) -> usize {
        encoded_len.saturating_mul(ZSTD_MAX_EXPANSION)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn coders() -> [Box<dyn EntropyCoder>; 2] {
        [Box::new(Lz4), Box::new(Zstd { level: 1 })]
    }

    #[test]
    fn zeros_compress_within_the_expansion_bound() {
        let zeros = vec![0u8; 1 << 20];
        for coder in coders() {
            let mut packed = vec![7u8];
            coder.compress(&zeros, &mut packed).unwrap();
            let packed = &packed[1..];
            assert!(coder.max_decoded_len(packed.len()) >= zeros.len());
            let mut back = vec![1u8; zeros.len()];
            coder.decompress(packed, &mut back).unwrap();
            assert_eq!(back, zeros);
        }
    }

    #[test]
    fn planes_compressed_apart_decode_as_one_stream() {
        let data: Vec<u8> = (0..9000u32)
            .map(|i| if i < 4500 { (i % 7) as u8 } else { 60 })
            .collect();
        for coder in coders() {
            let mut packed = Vec::new();
            coder.compress_planes(&data, 2, &mut packed).unwrap();
            let mut back = vec![0u8; data.len()];
            coder.decompress(&packed, &mut back).unwrap();
            assert_eq!(back, data);
        }
    }

    #[test]
    fn a_stream_for_another_length_is_refused() {
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 31 % 251) as u8).collect();
        for coder in coders() {
            let mut packed = Vec::new();
            coder.compress(&data, &mut packed).unwrap();
            let mut short = vec![0u8; data.len() - 1];
            assert!(coder.decompress(&packed, &mut short).is_err());
            let mut long = vec![0u8; data.len() + 1];
            assert!(coder.decompress(&packed, &mut long).is_err());
        }
    }
}
