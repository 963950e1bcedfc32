//! What a caller asks for and what a block header records: a transform followed by an
//! entropy coder, each applied to one layer at a time.
//!
//! Names, as configs write them: stages joined by `+`, the transform first, `none` when
//! both stages are absent. `shuffle`, `int8`, `fp8`, `int4:GROUP` (`int4` alone means
//! groups of 32); `lz4`, `zstd:LEVEL` (`zstd` alone means level 3). For example `lz4`,
//! `shuffle+zstd:1`, `int8+zstd:1`, `int4:32`.

use std::fmt;
use std::str::FromStr;

use crate::FormatError;

/// The first stage, from raw tensors to bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transform {
    /// The raw tensors.
    None,
    /// Lossless: the bytes of each element split into planes (high and low bytes of a
    /// 16-bit float), so that the slowly varying sign and exponent bytes sit together.
    Shuffle,
    /// Lossy: 8-bit asymmetric codes, keys per channel and values per token.
    Int8,
    /// Lossy: FP8 E4M3 codes with one scale per K or V tensor of a layer.
    Fp8,
    /// Lossy: 4-bit asymmetric codes in groups of `group` elements, keys per channel over
    /// tokens and values per token over channels.
    Int4 { group: u16 },
}

/// The second stage, over the bytes the transform produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Entropy {
    None,
    Lz4,
    /// zstd at `level` (1 to 22, or a negative fast level). The level only matters when
    /// encoding; it is recorded for inspection.
    Zstd {
        level: i8,
    },
}

/// A codec: a transform, then an entropy coder. Every combination is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CodecSpec {
    pub transform: Transform,
    pub entropy: Entropy,
}

/// Group size of `int4` when a name gives none.
pub const DEFAULT_INT4_GROUP: u16 = 32;
/// zstd level when a name gives none.
pub const DEFAULT_ZSTD_LEVEL: i8 = 3;

impl CodecSpec {
    /// The raw tensors, as [`crate::encode_block`] writes them.
    pub const NONE: CodecSpec = CodecSpec::new(Transform::None, Entropy::None);

    pub const fn new(transform: Transform, entropy: Entropy) -> Self {
        CodecSpec { transform, entropy }
    }

    pub const fn lz4() -> Self {
        CodecSpec::new(Transform::None, Entropy::Lz4)
    }

    pub const fn zstd(level: i8) -> Self {
        CodecSpec::new(Transform::None, Entropy::Zstd { level })
    }

    pub const fn int8() -> Self {
        CodecSpec::new(Transform::Int8, Entropy::None)
    }

    pub const fn fp8() -> Self {
        CodecSpec::new(Transform::Fp8, Entropy::None)
    }

    pub const fn int4(group: u16) -> Self {
        CodecSpec::new(Transform::Int4 { group }, Entropy::None)
    }

    /// The same entropy coder with the byte-shuffle filter in front.
    pub const fn shuffled(self) -> Self {
        CodecSpec::new(Transform::Shuffle, self.entropy)
    }

    /// The same transform followed by zstd at `level`.
    pub const fn then_zstd(self, level: i8) -> Self {
        CodecSpec::new(self.transform, Entropy::Zstd { level })
    }

    /// Whether decoding gives back the input bit for bit.
    pub fn is_lossless(&self) -> bool {
        matches!(self.transform, Transform::None | Transform::Shuffle)
    }

    /// Refuses parameters no block may carry.
    pub fn validate(&self) -> Result<(), FormatError> {
        if let Transform::Int4 { group: 0 } = self.transform {
            return Err(FormatError::BadCodecParams("int4 group is zero"));
        }
        if let Entropy::Zstd { level } = self.entropy {
            if level > 22 {
                return Err(FormatError::BadCodecParams("zstd level is above 22"));
            }
        }
        Ok(())
    }
}

impl fmt::Display for Transform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Transform::None => f.write_str("none"),
            Transform::Shuffle => f.write_str("shuffle"),
            Transform::Int8 => f.write_str("int8"),
            Transform::Fp8 => f.write_str("fp8"),
            Transform::Int4 { group } => write!(f, "int4:{group}"),
        }
    }
}

impl fmt::Display for Entropy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Entropy::None => f.write_str("none"),
            Entropy::Lz4 => f.write_str("lz4"),
            Entropy::Zstd { level } => write!(f, "zstd:{level}"),
        }
    }
}

impl fmt::Display for CodecSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.transform, self.entropy) {
            (Transform::None, entropy) => write!(f, "{entropy}"),
            (transform, Entropy::None) => write!(f, "{transform}"),
            (transform, entropy) => write!(f, "{transform}+{entropy}"),
        }
    }
}

impl FromStr for CodecSpec {
    type Err = FormatError;

    fn from_str(name: &str) -> Result<Self, FormatError> {
        let bad = || FormatError::BadCodecName(name.to_string());
        let mut spec = CodecSpec::NONE;
        let mut seen_entropy = false;
        for stage in name.trim().split('+') {
            let (word, arg) = match stage.split_once(':') {
                Some((word, arg)) => (word, Some(arg)),
                None => (stage, None),
            };
            let first = spec == CodecSpec::NONE && !seen_entropy;
            match (word, arg) {
                ("none", None) if name.trim() == "none" => {}
                ("lz4", None) if !seen_entropy => spec.entropy = Entropy::Lz4,
                ("zstd", arg) if !seen_entropy => {
                    let level = arg
                        .map_or(Ok(DEFAULT_ZSTD_LEVEL), str::parse)
                        .map_err(|_| bad())?;
                    spec.entropy = Entropy::Zstd { level };
                }
                ("shuffle", None) if first => spec.transform = Transform::Shuffle,
                ("int8", None) if first => spec.transform = Transform::Int8,
                ("fp8", None) if first => spec.transform = Transform::Fp8,
                ("int4", arg) if first => {
                    let group = arg
                        .map_or(Ok(DEFAULT_INT4_GROUP), str::parse)
                        .map_err(|_| bad())?;
                    spec.transform = Transform::Int4 { group };
                }
                _ => return Err(bad()),
            }
            seen_entropy |= spec.entropy != Entropy::None;
        }
        spec.validate().map_err(|_| bad())?;
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_display() {
        for name in [
            "none",
            "lz4",
            "zstd:3",
            "shuffle",
            "shuffle+lz4",
            "shuffle+zstd:-1",
            "int8",
            "int8+zstd:1",
            "fp8+lz4",
            "int4:32",
            "int4:128+zstd:19",
        ] {
            let spec: CodecSpec = name.parse().unwrap();
            assert_eq!(spec.to_string(), name);
        }
    }

    #[test]
    fn short_names_take_the_defaults() {
        assert_eq!("zstd".parse::<CodecSpec>().unwrap(), CodecSpec::zstd(3));
        assert_eq!("int4".parse::<CodecSpec>().unwrap(), CodecSpec::int4(32));
        assert_eq!(
            "shuffle+zstd".parse::<CodecSpec>().unwrap(),
            CodecSpec::zstd(3).shuffled()
        );
    }

    #[test]
    fn malformed_names_are_refused() {
        for name in [
            "", "lz4+int8", "lz4+zstd", "int8+fp8", "int4:0", "zstd:99", "none+lz4", "int8:4",
            "gzip",
        ] {
            assert!(name.parse::<CodecSpec>().is_err(), "{name:?} parsed");
        }
    }
}
