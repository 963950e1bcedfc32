//! One layer through a codec: transform, then entropy coder; and back.

use super::affine::Affine;
use super::elements::max_abs;
use super::entropy::{EntropyCoder, Lz4, Zstd};
use super::fp8::Fp8;
use super::scale::{ScaleFormat, NARROW_LIMIT};
use super::shuffle::Shuffle;
use super::{CodecSpec, Entropy, LayerTransform, Transform};
use crate::{BlockShape, FormatError};

/// Whether int8 or int4 must store f32 offsets and steps for `raw`; refuses non-finite
/// input to lossy codecs.
pub(crate) fn needs_wide_scales(
    spec: &CodecSpec,
    shape: &BlockShape,
    raw: &[u8],
) -> Result<bool, FormatError> {
    if spec.is_lossless() {
        return Ok(false);
    }
    let max = max_abs(shape.dtype, raw).ok_or(FormatError::NotFinite)?;
    let affine = matches!(spec.transform, Transform::Int8 | Transform::Int4 { .. });
    Ok(affine && max > NARROW_LIMIT)
}

/// The codec of one block, ready to encode or decode its layers.
pub(crate) struct LayerCoder {
    shape: BlockShape,
    /// `None` is the identity.
    transform: Option<Box<dyn LayerTransform>>,
    /// `None` stores the transform's output as it is.
    entropy: Option<Box<dyn EntropyCoder>>,
    stage_len: usize,
    /// Byte planes in the transform's output (the shuffle's), one otherwise.
    planes: usize,
}

impl LayerCoder {
    /// `wide_scales` is what [`needs_wide_scales`] said when the block was written.
    pub(crate) fn new(shape: &BlockShape, spec: &CodecSpec, wide_scales: bool) -> Self {
        let affine = |bits, group, narrow| {
            let scales = if wide_scales {
                ScaleFormat::Wide
            } else {
                narrow
            };
            Box::new(Affine {
                bits,
                group,
                scales,
            }) as Box<dyn LayerTransform>
        };
        let transform: Option<Box<dyn LayerTransform>> = match spec.transform {
            Transform::None => None,
            Transform::Shuffle => Some(Box::new(Shuffle)),
            Transform::Int8 => Some(affine(8, None, ScaleFormat::Half)),
            Transform::Fp8 => Some(Box::new(Fp8)),
            Transform::Int4 { group } => Some(affine(4, Some(group), ScaleFormat::HalfCoarse)),
        };
        let entropy: Option<Box<dyn EntropyCoder>> = match spec.entropy {
            Entropy::None => None,
            Entropy::Lz4 => Some(Box::new(Lz4)),
            Entropy::Zstd { level } => Some(Box::new(Zstd { level })),
        };
        let stage_len = transform
            .as_ref()
            .map_or(shape.layer_bytes(), |t| t.encoded_len(shape));
        let planes = match spec.transform {
            Transform::Shuffle => shape.dtype.size(),
            _ => 1,
        };
        LayerCoder {
            shape: *shape,
            transform,
            entropy,
            stage_len,
            planes,
        }
    }

    /// Bytes of one layer between the two stages.
    pub(crate) fn stage_len(&self) -> usize {
        self.stage_len
    }

    /// Whether the encoded length of a layer must equal the stage length.
    pub(crate) fn is_fixed_length(&self) -> bool {
        self.entropy.is_none()
    }

    /// Appends one encoded layer to `out`; `scratch` holds the transform's output.
    pub(crate) fn encode(
        &self,
        raw: &[u8],
        scratch: &mut Vec<u8>,
        out: &mut Vec<u8>,
    ) -> Result<(), FormatError> {
        match (&self.transform, &self.entropy) {
            (None, None) => out.extend_from_slice(raw),
            (None, Some(entropy)) => entropy.compress(raw, out)?,
            (Some(transform), None) => transform.encode(&self.shape, raw, out)?,
            (Some(transform), Some(entropy)) => {
                scratch.clear();
                transform.encode(&self.shape, raw, scratch)?;
                entropy.compress_planes(scratch, self.planes, out)?;
            }
        }
        Ok(())
    }

    /// Refuses an encoded layer that cannot decode to the stage length, before anything
    /// is allocated for it.
    pub(crate) fn check(&self, layer: usize, encoded_len: usize) -> Result<(), FormatError> {
        let plausible = match &self.entropy {
            None => encoded_len == self.stage_len,
            Some(entropy) => entropy.max_decoded_len(encoded_len) >= self.stage_len,
        };
        if plausible {
            Ok(())
        } else {
            Err(FormatError::CorruptLayer {
                layer,
                reason: "encoded length cannot hold the layer",
            })
        }
    }

    /// Decodes one layer into `raw` (`shape.layer_bytes()` long); `scratch` holds the
    /// entropy coder's output.
    pub(crate) fn decode(
        &self,
        layer: usize,
        encoded: &[u8],
        scratch: &mut Vec<u8>,
        raw: &mut [u8],
    ) -> Result<(), FormatError> {
        self.check(layer, encoded.len())?;
        let corrupt = |reason| FormatError::CorruptLayer { layer, reason };
        match (&self.transform, &self.entropy) {
            (None, None) => raw.copy_from_slice(encoded),
            (None, Some(entropy)) => entropy.decompress(encoded, raw).map_err(corrupt)?,
            (Some(transform), None) => transform.decode(&self.shape, encoded, raw),
            (Some(transform), Some(entropy)) => {
                scratch.clear();
                scratch.resize(self.stage_len, 0);
                entropy.decompress(encoded, scratch).map_err(corrupt)?;
                transform.decode(&self.shape, scratch, raw);
            }
        }
        Ok(())
    }
}
