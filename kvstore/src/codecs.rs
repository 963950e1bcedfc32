//! Which codec each tier stores a namespace's blocks in.
//!
//! Every tier has a [`TierCodec`]: `keep` stores a block in the codec it arrived in (the
//! default on every tier), a codec name re-encodes it on its way into the tier. The
//! store-wide choice comes from the config (`pinned_codec`, `dram_codec`, `ssd_codec`); a
//! namespace may override any tier over the API, and tiers it does not name follow the
//! store. Re-encoding only happens after the block's payload checksum was verified, so a
//! corrupt copy is never laundered into a block with a fresh checksum.

use std::fmt;
use std::str::FromStr;

use kvtier_format::{CodecSpec, FormatError};

use crate::tier::TierKind;

/// What a tier does with a block's codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TierCodec {
    /// Store the block as it came (from the put or from the hotter tier).
    #[default]
    Keep,
    /// Re-encode the block with this codec when it arrives in another one.
    Encode(CodecSpec),
}

impl FromStr for TierCodec {
    type Err = FormatError;

    /// `""` or `keep`, or a codec name as [`CodecSpec`] parses it.
    fn from_str(name: &str) -> Result<Self, FormatError> {
        match name.trim() {
            "" | "keep" => Ok(TierCodec::Keep),
            other => other.parse().map(TierCodec::Encode),
        }
    }
}

impl fmt::Display for TierCodec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TierCodec::Keep => f.write_str("keep"),
            TierCodec::Encode(spec) => write!(f, "{spec}"),
        }
    }
}

/// A codec choice per tier. `None` in a namespace's override means "as the store says".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TierCodecs<T = TierCodec> {
    pub pinned: T,
    pub dram: T,
    pub ssd: T,
}

/// A namespace's overrides: tiers left `None` follow the store-wide choice.
pub type NamespaceCodecs = TierCodecs<Option<TierCodec>>;

impl<T: Copy> TierCodecs<T> {
    pub fn get(&self, tier: TierKind) -> T {
        match tier {
            TierKind::Pinned => self.pinned,
            TierKind::Dram => self.dram,
            TierKind::Ssd => self.ssd,
        }
    }
}

impl TierCodecs {
    /// The codec of `tier` for a namespace with `overrides`.
    pub fn resolve(&self, overrides: Option<&NamespaceCodecs>, tier: TierKind) -> TierCodec {
        overrides
            .and_then(|o| o.get(tier))
            .unwrap_or_else(|| self.get(tier))
    }

    /// The codec a block in `current` must be re-encoded to in `tier`, if any.
    pub fn target(
        &self,
        overrides: Option<&NamespaceCodecs>,
        tier: TierKind,
        current: &CodecSpec,
    ) -> Option<CodecSpec> {
        match self.resolve(overrides, tier) {
            TierCodec::Encode(spec) if spec != *current => Some(spec),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_keep_mean_keep() {
        assert_eq!("".parse::<TierCodec>().unwrap(), TierCodec::Keep);
        assert_eq!("keep".parse::<TierCodec>().unwrap(), TierCodec::Keep);
        assert_eq!(
            "int8+zstd:1".parse::<TierCodec>().unwrap(),
            TierCodec::Encode(CodecSpec::int8().then_zstd(1))
        );
        assert!("int9".parse::<TierCodec>().is_err());
    }

    #[test]
    fn a_namespace_override_wins_only_on_the_tiers_it_names() {
        let store = TierCodecs {
            ssd: TierCodec::Encode(CodecSpec::int8()),
            ..TierCodecs::default()
        };
        let overrides = NamespaceCodecs {
            dram: Some(TierCodec::Encode(CodecSpec::lz4())),
            ..NamespaceCodecs::default()
        };
        let none = CodecSpec::NONE;
        let target = |tier| store.target(Some(&overrides), tier, &none);
        assert_eq!(target(TierKind::Dram), Some(CodecSpec::lz4()));
        assert_eq!(target(TierKind::Ssd), Some(CodecSpec::int8()));
        assert_eq!(target(TierKind::Pinned), None);
        assert_eq!(store.target(None, TierKind::Ssd, &CodecSpec::int8()), None);
    }
}
