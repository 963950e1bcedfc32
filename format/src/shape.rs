use crate::FormatError;

/// Length in bytes of every block key and namespace fingerprint.
pub const KEY_LEN: usize = 32;

/// Element type of the K and V tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    BF16,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }

    /// The name used in namespace fingerprints and configs.
    pub fn as_str(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
        }
    }

    pub(crate) fn to_id(self) -> u8 {
        match self {
            DType::F32 => 1,
            DType::F16 => 2,
            DType::BF16 => 3,
        }
    }

    pub(crate) fn from_id(id: u8) -> Result<Self, FormatError> {
        match id {
            1 => Ok(DType::F32),
            2 => Ok(DType::F16),
            3 => Ok(DType::BF16),
            other => Err(FormatError::UnknownDType(other)),
        }
    }
}

/// The shape of every block of a namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockShape {
    pub n_layers: u32,
    pub n_kv_heads: u32,
    pub block_tokens: u32,
    pub head_dim: u32,
    pub dtype: DType,
}

impl BlockShape {
    /// Refuses zero dimensions and shapes whose raw size does not fit in memory arithmetic.
    pub fn validate(&self) -> Result<(), FormatError> {
        if self.n_layers == 0 || self.n_kv_heads == 0 || self.block_tokens == 0 {
            return Err(FormatError::BadShape("a dimension is zero"));
        }
        if self.head_dim == 0 {
            return Err(FormatError::BadShape("head_dim is zero"));
        }
        if self.checked_raw_bytes().is_none() {
            return Err(FormatError::BadShape("raw size overflows"));
        }
        Ok(())
    }

    /// Bytes of one K (or V) tensor of one layer.
    pub fn tensor_bytes(&self) -> usize {
        self.n_kv_heads as usize
            * self.block_tokens as usize
            * self.head_dim as usize
            * self.dtype.size()
    }

    /// Bytes of one layer, K and V.
    pub fn layer_bytes(&self) -> usize {
        2 * self.tensor_bytes()
    }

    /// Bytes of the uncompressed block payload.
    pub fn raw_bytes(&self) -> usize {
        self.layer_bytes() * self.n_layers as usize
    }

    fn checked_raw_bytes(&self) -> Option<u64> {
        [
            self.n_kv_heads,
            self.block_tokens,
            self.head_dim,
            self.n_layers,
        ]
        .iter()
        .try_fold(2 * self.dtype.size() as u64, |acc, &d| {
            acc.checked_mul(d as u64)
        })
        .filter(|&n| n <= u32::MAX as u64)
    }
}
