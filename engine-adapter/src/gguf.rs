//! Reading a GGUF file: typed access to its metadata and its tensors as f32.
//!
//! [`GgufFile::open`] reads the header (metadata and tensor directory) once; tensors are
//! read from the file on demand by [`GgufFile::tensor_f32`], which dequantizes quantized
//! types, since the reference CPU path computes in f32. The whole file's sha256 is what
//! kvtier calls the weights digest ([`sha256_file`]).

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{Device, Tensor};
use sha2::{Digest, Sha256};

use crate::error::{EngineError, Result};

/// An open GGUF file: the parsed header plus a reader for the tensor data.
pub struct GgufFile {
    path: PathBuf,
    reader: BufReader<File>,
    content: Content,
}

impl GgufFile {
    /// Opens `path` and parses its header; no tensor data is read yet.
    pub fn open(path: &Path) -> Result<Self> {
        let io_err = |source| EngineError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut reader = BufReader::new(File::open(path).map_err(io_err)?);
        let content = Content::read(&mut reader)?;
        Ok(Self {
            path: path.to_path_buf(),
            reader,
            content,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The raw metadata value under `key`, if present.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    /// An unsigned integer under `key`, whatever integer width the writer chose.
    pub fn u64_opt(&self, key: &str) -> Result<Option<u64>> {
        self.get(key).map(|v| value_u64(v, key)).transpose()
    }

    pub fn u64(&self, key: &str) -> Result<u64> {
        self.u64_opt(key)?.ok_or_else(|| missing(key))
    }

    /// `key` as a `usize`, for dimensions and counts.
    pub fn usize(&self, key: &str) -> Result<usize> {
        let v = self.u64(key)?;
        usize::try_from(v).map_err(|_| bad(key, "a usize"))
    }

    /// A float under `key` (f32 or f64 in the file).
    pub fn f32_opt(&self, key: &str) -> Result<Option<f32>> {
        self.get(key)
            .map(|v| match v {
                Value::F32(x) => Ok(*x),
                Value::F64(x) => Ok(*x as f32),
                _ => Err(bad(key, "a float")),
            })
            .transpose()
    }

    pub fn bool_opt(&self, key: &str) -> Result<Option<bool>> {
        self.get(key)
            .map(|v| v.to_bool().map_err(|_| bad(key, "a bool")))
            .transpose()
    }

    pub fn str_opt(&self, key: &str) -> Result<Option<&str>> {
        self.get(key)
            .map(|v| match v {
                Value::String(s) => Ok(s.as_str()),
                _ => Err(bad(key, "a string")),
            })
            .transpose()
    }

    pub fn str(&self, key: &str) -> Result<&str> {
        self.str_opt(key)?.ok_or_else(|| missing(key))
    }

    /// The array under `key`; missing is an error.
    pub fn array(&self, key: &str) -> Result<&[Value]> {
        match self.get(key) {
            Some(Value::Array(items)) => Ok(items),
            Some(_) => Err(bad(key, "an array")),
            None => Err(missing(key)),
        }
    }

    pub fn strings(&self, key: &str) -> Result<Vec<&str>> {
        self.array(key)?
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.as_str()),
                _ => Err(bad(key, "an array of strings")),
            })
            .collect()
    }

    pub fn floats(&self, key: &str) -> Result<Vec<f32>> {
        self.array(key)?
            .iter()
            .map(|v| match v {
                Value::F32(x) => Ok(*x),
                Value::F64(x) => Ok(*x as f32),
                _ => Err(bad(key, "an array of floats")),
            })
            .collect()
    }

    pub fn ints(&self, key: &str) -> Result<Vec<i64>> {
        self.array(key)?
            .iter()
            .map(|v| value_i64(v).ok_or_else(|| bad(key, "an array of integers")))
            .collect()
    }

    pub fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    /// Reads tensor `name` and dequantizes it to f32 on the CPU. Dimensions come out in
    /// the row-major order of the original checkpoint (`[out, in]` for a linear weight).
    pub fn tensor_f32(&mut self, name: &str) -> Result<Tensor> {
        if !self.has_tensor(name) {
            return Err(EngineError::MissingTensor { name: name.into() });
        }
        let q = self.content.tensor(&mut self.reader, name, &Device::Cpu)?;
        Ok(q.dequantize(&Device::Cpu)?)
    }
}

/// Hex sha256 of the file at `path`: the weights digest in a kvtier namespace.
pub fn sha256_file(path: &Path) -> Result<String> {
    let io_err = |source| EngineError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(io_err)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(io_err)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

fn value_i64(v: &Value) -> Option<i64> {
    Some(match v {
        Value::U8(x) => (*x).into(),
        Value::I8(x) => (*x).into(),
        Value::U16(x) => (*x).into(),
        Value::I16(x) => (*x).into(),
        Value::U32(x) => (*x).into(),
        Value::I32(x) => (*x).into(),
        Value::I64(x) => *x,
        Value::U64(x) => i64::try_from(*x).ok()?,
        _ => return None,
    })
}

fn value_u64(v: &Value, key: &str) -> Result<u64> {
    let as_u64 = match v {
        Value::U64(x) => Some(*x),
        other => value_i64(other).and_then(|x| u64::try_from(x).ok()),
    };
    as_u64.ok_or_else(|| bad(key, "an unsigned integer"))
}

fn missing(key: &str) -> EngineError {
    EngineError::MissingMetadata { key: key.into() }
}

fn bad(key: &str, expected: &'static str) -> EngineError {
    EngineError::BadMetadata {
        key: key.into(),
        expected,
    }
}
