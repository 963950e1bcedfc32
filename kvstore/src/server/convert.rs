//! Wire to domain conversions for the KvCache service. Every malformed field becomes an
//! InvalidArgument status whose message names the field.

use bytes::Bytes;
use kvtier_format::{BlockShape, DType};
use kvtier_proto::v1 as pb;
use tonic::Status;

use crate::{Durability, Key, NamespaceSpec, PutOptions, StoreError, KEY_LEN};

pub fn status(error: StoreError) -> Status {
    match error {
        StoreError::InvalidArgument { .. } => Status::invalid_argument(error.to_string()),
        StoreError::Full { .. } | StoreError::DiskFull => {
            Status::resource_exhausted(error.to_string())
        }
        StoreError::Io(_) => Status::unavailable(error.to_string()),
    }
}

fn invalid(field: &str, reason: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {reason}"))
}

pub fn key(field: &str, bytes: &Bytes) -> Result<Key, Status> {
    if bytes.is_empty() {
        return Err(invalid(field, "key is empty; keys are 32 bytes"));
    }
    Key::try_from(bytes.as_ref()).map_err(|_| {
        invalid(
            field,
            format!("key is {} bytes; keys are {KEY_LEN}", bytes.len()),
        )
    })
}

pub fn keys(list: &[Bytes]) -> Result<Vec<Key>, Status> {
    list.iter()
        .enumerate()
        .map(|(i, bytes)| key(&format!("keys[{i}]"), bytes))
        .collect()
}

pub fn namespace(namespace: Option<&pb::Namespace>) -> Result<NamespaceSpec, Status> {
    let namespace = namespace.ok_or_else(|| invalid("namespace", "is missing"))?;
    let fingerprint = key("namespace.fingerprint", &namespace.fingerprint)?;
    let layout = namespace
        .layout
        .as_ref()
        .ok_or_else(|| invalid("namespace.layout", "is missing"))?;
    let dtype = match pb::DType::try_from(layout.dtype) {
        Ok(pb::DType::DtypeF32) => DType::F32,
        Ok(pb::DType::DtypeF16) => DType::F16,
        Ok(pb::DType::DtypeBf16) => DType::BF16,
        _ => {
            return Err(invalid(
                "namespace.layout.dtype",
                "must be f32, f16 or bf16",
            ))
        }
    };
    let shape = BlockShape {
        n_layers: layout.n_layers,
        n_kv_heads: layout.n_kv_heads,
        block_tokens: layout.block_tokens,
        head_dim: layout.head_dim,
        dtype,
    };
    shape
        .validate()
        .map_err(|e| invalid("namespace.layout", e))?;
    Ok(NamespaceSpec {
        tenant: namespace.tenant.clone(),
        fingerprint,
        shape,
    })
}

/// The parent key, which must be present exactly when `position` is not 0.
pub fn parent(bytes: &Bytes, position: u32) -> Result<Option<Key>, Status> {
    match (position, bytes.is_empty()) {
        (0, true) => Ok(None),
        (0, false) => Err(invalid("parent", "must be empty at position 0")),
        (_, true) => Err(invalid("parent", "is required after position 0")),
        (_, false) => key("parent", bytes).map(Some),
    }
}

pub fn put_options(request: &pb::PutRequest) -> Result<PutOptions, Status> {
    let durability = match pb::Durability::try_from(request.durability) {
        Ok(pb::Durability::Unspecified) => None,
        Ok(pb::Durability::None) => Some(Durability::None),
        Ok(pb::Durability::Async) => Some(Durability::Async),
        Ok(pb::Durability::Sync) => Some(Durability::Sync),
        Err(_) => return Err(invalid("durability", "must be none, async or sync")),
    };
    let conversation = (!request.conversation.is_empty()).then(|| request.conversation.clone());
    Ok(PutOptions {
        hot: request.hot,
        conversation,
        durability,
    })
}
