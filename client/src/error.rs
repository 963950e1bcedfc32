use thiserror::Error;

/// A failed call to kvtierd.
#[derive(Debug, Error)]
pub enum ClientError {
    #[error("cannot connect to kvtierd at {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("kvtierd answered {}: {}", .0.code(), .0.message())]
    Status(#[from] tonic::Status),
    #[error("kvtierd sent a malformed answer: {0}")]
    Protocol(String),
}

impl ClientError {
    /// The gRPC code of a refused call, if the server answered at all.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            ClientError::Status(status) => Some(status.code()),
            _ => None,
        }
    }
}
