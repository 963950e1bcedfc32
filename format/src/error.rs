use thiserror::Error;

/// Why a byte string is not a valid block, or why a block could not be encoded.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FormatError {
    #[error("block is {len} bytes, shorter than its {need}-byte header")]
    Truncated { len: usize, need: usize },
    #[error("block does not start with the kvtier magic")]
    BadMagic,
    #[error("block format version {found} is not supported (this build reads {supported})")]
    UnsupportedVersion { found: u16, supported: u16 },
    #[error("header length field is {found}, the layout needs {expected}")]
    HeaderLength { found: u16, expected: usize },
    #[error("unknown codec id {0}")]
    UnknownCodec(u8),
    #[error("unknown entropy coder id {0}")]
    UnknownEntropy(u8),
    #[error("codec parameters are invalid: {0}")]
    BadCodecParams(&'static str),
    #[error("codec name {0:?} is not understood")]
    BadCodecName(String),
    #[error("unknown dtype id {0}")]
    UnknownDType(u8),
    #[error("block shape is invalid: {0}")]
    BadShape(&'static str),
    #[error("header checksum mismatch")]
    HeaderChecksum,
    #[error("header padding is not zero")]
    HeaderPadding,
    #[error("payload is {found} bytes, header says {expected}")]
    PayloadLength { expected: u64, found: u64 },
    #[error("payload checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    PayloadChecksum { stored: u32, computed: u32 },
    #[error("layer offsets are not increasing within the payload")]
    LayerOffsets,
    #[error("layer {layer} does not exist (the block has {n_layers})")]
    LayerIndex { layer: usize, n_layers: u32 },
    #[error("layer {layer} does not decode: {reason}")]
    CorruptLayer { layer: usize, reason: &'static str },
    #[error("output buffer is {found} bytes, the layer needs {expected}")]
    OutputLength { expected: usize, found: usize },
    #[error("raw data is {found} bytes, the shape needs {expected}")]
    RawLength { expected: usize, found: usize },
    #[error("a lossy codec cannot encode NaN or infinite values")]
    NotFinite,
    #[error("compression failed: {0}")]
    Compress(String),
}
