//! Settings of the segment log. [`SsdConfig::validate`] names the first field out of range.

use std::path::PathBuf;

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

use crate::ConfigError;

/// Smallest segment: room for the segment header and a few records.
pub const MIN_SEGMENT_BYTES: u64 = 64 << 10;
/// Largest segment; offsets are u64 but a bounded segment keeps compaction steps bounded.
pub const MAX_SEGMENT_BYTES: u64 = 64 << 30;

/// Which I/O engine moves the bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum IoEngineKind {
    /// io_uring when the kernel allows it, else pread/pwrite (with one warning).
    #[default]
    Auto,
    /// io_uring only; opening fails where it is unavailable.
    Uring,
    /// Plain pread/pwrite.
    Psync,
}

/// Settings of the `ssd` tier's segment log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SsdConfig {
    /// Directory holding the segment files; created when absent. Default `kvtier-ssd`.
    pub dir: PathBuf,
    /// Size at which the head segment is sealed and a new one started; also bounds one
    /// record. Default 256 MiB; a multiple of 4 KiB from 64 KiB to 64 GiB.
    pub segment_bytes: ByteSize,
    /// I/O engine. Default `auto`.
    pub io_engine: IoEngineKind,
    /// Live fraction under which a sealed segment is rewritten by compaction. Default 0.5;
    /// from 0 (never) to 1 (any dead byte).
    pub compaction_threshold: f64,
}

impl Default for SsdConfig {
    fn default() -> Self {
        SsdConfig {
            dir: PathBuf::from("kvtier-ssd"),
            segment_bytes: ByteSize::mib(256),
            io_engine: IoEngineKind::Auto,
            compaction_threshold: 0.5,
        }
    }
}

impl SsdConfig {
    /// The defaults, with segment files in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        SsdConfig {
            dir: dir.into(),
            ..SsdConfig::default()
        }
    }

    /// Checks every bound; the error names the first field that is out of range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field: &'static str, reason: String| ConfigError::Invalid { field, reason };
        if self.dir.as_os_str().is_empty() {
            return Err(invalid("dir", "must not be empty".into()));
        }
        let segment = self.segment_bytes.as_u64();
        if !(MIN_SEGMENT_BYTES..=MAX_SEGMENT_BYTES).contains(&segment) {
            return Err(invalid(
                "segment_bytes",
                format!("{segment} is outside {MIN_SEGMENT_BYTES}..={MAX_SEGMENT_BYTES}"),
            ));
        }
        if !segment.is_multiple_of(4096) {
            return Err(invalid(
                "segment_bytes",
                format!("{segment} is not a multiple of 4096"),
            ));
        }
        let threshold = self.compaction_threshold;
        if !(0.0..=1.0).contains(&threshold) {
            return Err(invalid(
                "compaction_threshold",
                format!("{threshold} is outside 0..=1"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(config: &SsdConfig) -> &'static str {
        match config.validate() {
            Err(ConfigError::Invalid { field, .. }) => field,
            other => panic!("expected an invalid field, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_valid() {
        SsdConfig::default().validate().unwrap();
    }

    #[test]
    fn out_of_range_values_name_their_field() {
        let mut config = SsdConfig::new("/tmp/x");
        config.segment_bytes = ByteSize::kib(4);
        assert_eq!(field_of(&config), "segment_bytes");
        config.segment_bytes = ByteSize::b(MIN_SEGMENT_BYTES + 1);
        assert_eq!(field_of(&config), "segment_bytes");
        config.segment_bytes = ByteSize::mib(1);
        config.compaction_threshold = f64::NAN;
        assert_eq!(field_of(&config), "compaction_threshold");
        config.compaction_threshold = 0.5;
        config.dir = PathBuf::new();
        assert_eq!(field_of(&config), "dir");
    }

    #[test]
    fn engine_kinds_parse_from_lowercase_names() {
        let config: SsdConfig =
            toml::from_str("io_engine = \"psync\"\nsegment_bytes = \"1 MiB\"").unwrap();
        assert_eq!(config.io_engine, IoEngineKind::Psync);
        assert_eq!(config.segment_bytes, ByteSize::mib(1));
    }
}
