//! The SetNamespaceCodecs call: per-tier codec overrides for one namespace.

use kvtier_proto::v1 as pb;
use tonic::Status;

use super::convert;
use crate::codecs::{NamespaceCodecs, TierCodec, TierCodecs};
use crate::Store;

/// Applies the request's overrides and answers with the codecs now in force.
pub fn set(
    store: &Store,
    request: &pb::SetNamespaceCodecsRequest,
) -> Result<pb::SetNamespaceCodecsResponse, Status> {
    let namespace = convert::namespace(request.namespace.as_ref())?;
    let overrides = NamespaceCodecs {
        pinned: choice("pinned", &request.pinned)?,
        dram: choice("dram", &request.dram)?,
        ssd: choice("ssd", &request.ssd)?,
    };
    store.set_namespace_codecs(namespace.fingerprint, overrides);
    let TierCodecs { pinned, dram, ssd } = store.namespace_codecs(&namespace.fingerprint);
    Ok(pb::SetNamespaceCodecsResponse {
        pinned: pinned.to_string(),
        dram: dram.to_string(),
        ssd: ssd.to_string(),
    })
}

/// Empty follows the config; anything else must parse.
fn choice(field: &str, name: &str) -> Result<Option<TierCodec>, Status> {
    if name.is_empty() {
        return Ok(None);
    }
    name.parse()
        .map(Some)
        .map_err(|e| Status::invalid_argument(format!("{field}: {e}")))
}
