//! The key scheme: namespace fingerprints and chained block keys.
//!
//! Every engine computes the same keys for the same tokens, on any machine, in any process:
//! the inputs are hashed with BLAKE3 in a fixed, length-prefixed encoding and nothing random
//! enters. `golden_keys.json` in this crate's tests pins the scheme down to the byte.

use kvtier_format::{DType, KEY_LEN};

/// A 32-byte block key or fingerprint.
pub type Key = [u8; KEY_LEN];

const NAMESPACE_DOMAIN: &[u8] = b"kvtier.namespace.v1";
const BLOCK_DOMAIN: &[u8] = b"kvtier.block.v1";

/// Whether keys are stored after rotary position embedding (the default) or before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RopePlacement {
    #[default]
    Post,
    Pre,
}

impl RopePlacement {
    fn as_str(self) -> &'static str {
        match self {
            RopePlacement::Post => "post",
            RopePlacement::Pre => "pre",
        }
    }
}

/// Everything that changes the bytes of a block. Optional fields that are `None` are left
/// out of the hash entirely, so a salt "X" and an adapter named "X" never collide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceFields {
    pub tenant: String,
    pub salt: Option<String>,
    pub model_name: String,
    /// Hex digest (sha256) of the weights file.
    pub weights_digest: String,
    pub n_layers: u32,
    pub n_kv_heads: u32,
    pub head_dim: u32,
    pub dtype: DType,
    pub block_tokens: u32,
    pub rope: RopePlacement,
    pub adapter_name: Option<String>,
    pub adapter_id: Option<String>,
}

impl NamespaceFields {
    /// The 32-byte BLAKE3 model fingerprint of the key scheme.
    pub fn fingerprint(&self) -> Key {
        let mut hasher = blake3::Hasher::new();
        hasher.update(NAMESPACE_DOMAIN);
        for (tag, body) in self.encoded_fields() {
            hasher.update(&[tag]);
            hasher.update(&(body.len() as u32).to_le_bytes());
            hasher.update(&body);
        }
        *hasher.finalize().as_bytes()
    }

    /// Present fields with their tags, in tag order: integers as little-endian u32, the
    /// rest as UTF-8.
    fn encoded_fields(&self) -> Vec<(u8, Vec<u8>)> {
        let text = |s: &str| s.as_bytes().to_vec();
        let int = |n: u32| n.to_le_bytes().to_vec();
        let mut fields = vec![(1, text(&self.tenant))];
        if let Some(salt) = &self.salt {
            fields.push((2, text(salt)));
        }
        fields.extend([
            (3, text(&self.model_name)),
            (4, text(&self.weights_digest)),
            (5, int(self.n_layers)),
            (6, int(self.n_kv_heads)),
            (7, int(self.head_dim)),
            (8, text(self.dtype.as_str())),
            (9, int(self.block_tokens)),
            (10, text(self.rope.as_str())),
        ]);
        if let Some(name) = &self.adapter_name {
            fields.push((11, text(name)));
        }
        if let Some(id) = &self.adapter_id {
            fields.push((12, text(id)));
        }
        fields
    }
}

/// Chained keys of every full block of `tokens`; a partial tail gets no key.
pub fn block_keys(fingerprint: &Key, tokens: &[u32], block_tokens: usize) -> Vec<Key> {
    assert!(block_tokens > 0, "block_tokens must be positive");
    let mut parent = [0u8; KEY_LEN];
    tokens
        .chunks_exact(block_tokens)
        .map(|chunk| {
            parent = block_key(fingerprint, &parent, chunk);
            parent
        })
        .collect()
}

/// The key of one block given its parent's key (32 zero bytes for the first block).
pub fn block_key(fingerprint: &Key, parent: &Key, tokens: &[u32]) -> Key {
    let mut hasher = blake3::Hasher::new();
    hasher.update(BLOCK_DOMAIN);
    hasher.update(fingerprint);
    hasher.update(parent);
    hasher.update(&(tokens.len() as u32).to_le_bytes());
    for token in tokens {
        hasher.update(&token.to_le_bytes());
    }
    *hasher.finalize().as_bytes()
}
