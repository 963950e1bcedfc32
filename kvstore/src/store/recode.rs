//! Re-encoding a block for the tier it is written to, when that tier's codec for the
//! block's namespace differs from the block's own.
//!
//! Every copy written to a tier goes through [`Inner::encode_for`]: puts, demotions,
//! write-back and promotions. The block's payload checksum is verified first; a block
//! that fails is refused as corrupt rather than re-encoded under a fresh checksum. A
//! lossy codec that cannot encode the block (NaN or infinite values) leaves it as it is.
//! The namespace is the one in the block's header, so a copy moved by eviction, which
//! knows no request, finds the same codecs as its put did.

use bytes::Bytes;
use kvtier_format::{encode_block_with, BlockView};

use super::{hex, lock, Inner};
use crate::codecs::NamespaceCodecs;
use crate::tier::{TierError, TierKind};
use crate::Key;

impl Inner {
    /// `block` in the codec `tier` stores its namespace's blocks in.
    pub(super) fn encode_for(&self, tier: TierKind, block: &Bytes) -> Result<Bytes, TierError> {
        let corrupt = |reason: String| TierError::Corrupt {
            tier: tier.as_str(),
            reason,
        };
        let view = BlockView::parse(block).map_err(|e| corrupt(e.to_string()))?;
        let overrides = self.namespace_codecs(&view.fingerprint);
        let Some(target) = self.codecs.target(overrides.as_ref(), tier, &view.codec) else {
            return Ok(block.clone());
        };
        view.verify_payload().map_err(|e| corrupt(e.to_string()))?;
        let raw = view.decoded().map_err(|e| corrupt(e.to_string()))?;
        match encode_block_with(&view.fingerprint, &view.shape, &raw, &target) {
            Ok(encoded) => {
                tracing::trace!(
                    tier = tier.as_str(),
                    from = %view.codec,
                    to = %target,
                    bytes = encoded.len(),
                    "block re-encoded"
                );
                Ok(Bytes::from(encoded))
            }
            Err(error) => {
                let fingerprint = hex(&view.fingerprint);
                tracing::debug!(%fingerprint, %error, "block kept in its codec");
                Ok(block.clone())
            }
        }
    }

    pub(super) fn namespace_codecs(&self, fingerprint: &Key) -> Option<NamespaceCodecs> {
        lock(&self.namespace_codecs).get(fingerprint).copied()
    }

    pub(super) fn set_namespace_codecs(&self, fingerprint: Key, codecs: NamespaceCodecs) {
        let mut all = lock(&self.namespace_codecs);
        if codecs == NamespaceCodecs::default() {
            all.remove(&fingerprint);
        } else {
            all.insert(fingerprint, codecs);
        }
    }
}
