use kvtier_format::{BlockShape, DType};
use kvtier_proto::v1 as pb;

use crate::{Key, NamespaceFields};

/// A namespace as the store sees it: tenant, fingerprint and block shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    pub tenant: String,
    pub fingerprint: Key,
    pub shape: BlockShape,
}

impl Namespace {
    /// The namespace of a model's fields, with its fingerprint computed.
    pub fn from_fields(fields: &NamespaceFields) -> Self {
        Namespace {
            tenant: fields.tenant.clone(),
            fingerprint: fields.fingerprint(),
            shape: BlockShape {
                n_layers: fields.n_layers,
                n_kv_heads: fields.n_kv_heads,
                block_tokens: fields.block_tokens,
                head_dim: fields.head_dim,
                dtype: fields.dtype,
            },
        }
    }

    pub(crate) fn to_proto(&self) -> pb::Namespace {
        let dtype = match self.shape.dtype {
            DType::F32 => pb::DType::DtypeF32,
            DType::F16 => pb::DType::DtypeF16,
            DType::BF16 => pb::DType::DtypeBf16,
        };
        pb::Namespace {
            tenant: self.tenant.clone(),
            fingerprint: self.fingerprint.to_vec().into(),
            layout: Some(pb::BlockLayout {
                n_layers: self.shape.n_layers,
                n_kv_heads: self.shape.n_kv_heads,
                block_tokens: self.shape.block_tokens,
                head_dim: self.shape.head_dim,
                dtype: dtype as i32,
            }),
        }
    }
}
