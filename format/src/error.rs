use thiserror::Error;

/// Why a byte string is not a valid block.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FormatError {
    #[error("block is {len} bytes, shorter than its {need}-byte header")]
    Truncated { len: usize, need: usize },
    #[error("block does not start with the kvtier magic")]
    BadMagic,
    #[error("block format version {found} is not supported (this build reads {supported})")]
    UnsupportedVersion { found: u16, supported: u16 },
    #[error("unknown codec id {0}")]
    UnknownCodec(u8),
    #[error("unknown dtype id {0}")]
    UnknownDType(u8),
    #[error("block shape is invalid: {0}")]
    BadShape(&'static str),
    #[error("header checksum mismatch")]
    HeaderChecksum,
    #[error("payload is {found} bytes, header says {expected}")]
    PayloadLength { expected: u64, found: u64 },
    #[error("payload checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    PayloadChecksum { stored: u32, computed: u32 },
    #[error("layer offsets are not increasing within the payload")]
    LayerOffsets,
    #[error("raw data is {found} bytes, the shape needs {expected}")]
    RawLength { expected: usize, found: usize },
}
