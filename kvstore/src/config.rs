//! kvtierd's configuration: one TOML file whose every field has a default, overridden by
//! flags and `KVTIER_*` environment variables. [`Config::validate`] refuses bad values with
//! an error naming the field.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

use crate::cluster::ClusterSettings;
use crate::codecs::{TierCodec, TierCodecs};
use crate::metrics::MetricsListen;
use crate::tier::ssd::{IoEngineKind, SsdConfig};
use crate::ConfigError;

/// When a put's block reaches the ssd tier.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Only when memory pressure demotes it; a restart may lose any block.
    None,
    /// Written back in the background within about 100 ms of the put.
    #[default]
    Async,
    /// Written through and synced before the put is acknowledged.
    Sync,
}

/// kvtierd settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the KvCache service listens on. Default `127.0.0.1:50051`.
    pub listen: SocketAddr,
    /// Directory of the ssd tier's segments and the block index. Default none: the store
    /// lives in memory only and a restart starts empty.
    pub data_dir: Option<PathBuf>,
    /// Byte capacity of the pinned (page-locked) tier. Default 0 (off).
    pub pinned_capacity: ByteSize,
    /// Byte capacity of the dram tier; never exceeded. Default 4 GiB; at least 1 MiB.
    pub dram_capacity: ByteSize,
    /// Byte capacity of the ssd tier (live records). Default 64 GiB; used with `data_dir`,
    /// and then room for at least one block of `max_block_bytes`.
    pub ssd_capacity: ByteSize,
    /// When blocks are written to the ssd tier: `none`, `async` (default) or `sync`.
    pub durability: Durability,
    /// Size of one segment file. Default 256 MiB; a multiple of 4 KiB, 64 KiB to 64 GiB.
    pub segment_size: ByteSize,
    /// I/O engine of the ssd tier: `auto` (default), `uring` or `psync`.
    pub io_engine: IoEngineKind,
    /// Live fraction under which a segment is compacted. Default 0.5; 0 to 1.
    pub compaction_threshold: f64,
    /// Largest encoded block a put may carry. Default 64 MiB; at most the dram capacity and
    /// at least 64 KiB below `max_message_bytes`.
    pub max_block_bytes: ByteSize,
    /// gRPC message size limit of the transport, both directions. Default 72 MiB; at most
    /// 1 GiB.
    pub max_message_bytes: ByteSize,
    /// Address of the Prometheus endpoint. Default `127.0.0.1:9091`; `""` serves no
    /// metrics. Must differ from `listen`.
    pub metrics_listen: MetricsListen,
    /// Codec of blocks in the pinned tier: `keep` (default: as put) or a codec name such
    /// as `lz4`, `shuffle+zstd:1`, `int8`, `int4:32+zstd:1`. A namespace may override it.
    pub pinned_codec: String,
    /// Codec of blocks in the dram tier, as for `pinned_codec`. Default `keep`.
    pub dram_codec: String,
    /// Codec of blocks in the ssd tier, as for `pinned_codec`; blocks demoted or written
    /// back in another codec are re-encoded. Default `keep`.
    pub ssd_codec: String,
    /// Cluster membership and the Raft group: the `[cluster]` table.
    pub cluster: ClusterSettings,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            data_dir: None,
            pinned_capacity: ByteSize::b(0),
            dram_capacity: ByteSize::gib(4),
            ssd_capacity: ByteSize::gib(64),
            durability: Durability::Async,
            segment_size: ByteSize::mib(256),
            io_engine: IoEngineKind::Auto,
            compaction_threshold: 0.5,
            max_block_bytes: ByteSize::mib(64),
            max_message_bytes: ByteSize::mib(72),
            metrics_listen: MetricsListen::default(),
            pinned_codec: "keep".into(),
            dram_codec: "keep".into(),
            ssd_codec: "keep".into(),
            cluster: ClusterSettings::default(),
        }
    }
}

/// Room a request needs beyond its block.
const MESSAGE_HEADROOM: u64 = 64 << 10;
/// Upper bound on a record's on-disk size beyond its block: header plus 4 KiB padding.
const RECORD_OVERHEAD: u64 = 8192;

fn invalid(field: &'static str, reason: String) -> ConfigError {
    ConfigError::Invalid { field, reason }
}

impl Config {
    /// Reads a TOML file; absent fields keep their defaults.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Checks every bound; the error names the first field that is out of range. The ssd
    /// fields are checked even without a data directory, so a bad value never waits silently
    /// for the day one is set.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_memory()?;
        self.validate_ssd()?;
        self.validate_metrics()?;
        self.cluster.validate()?;
        self.tier_codecs().map(|_| ())
    }

    /// The store-wide codec of every tier; the error names the field that does not parse.
    pub fn tier_codecs(&self) -> Result<TierCodecs, ConfigError> {
        let parse = |field: &'static str, name: &str| {
            name.parse::<TierCodec>()
                .map_err(|e| invalid(field, e.to_string()))
        };
        Ok(TierCodecs {
            pinned: parse("pinned_codec", &self.pinned_codec)?,
            dram: parse("dram_codec", &self.dram_codec)?,
            ssd: parse("ssd_codec", &self.ssd_codec)?,
        })
    }

    fn validate_memory(&self) -> Result<(), ConfigError> {
        if self.dram_capacity < ByteSize::mib(1) {
            let reason = format!("{} is under 1 MiB", self.dram_capacity);
            return Err(invalid("dram_capacity", reason));
        }
        if self.max_block_bytes.as_u64() == 0 || self.max_block_bytes > self.dram_capacity {
            let reason = format!(
                "{} must be positive and at most dram_capacity",
                self.max_block_bytes
            );
            return Err(invalid("max_block_bytes", reason));
        }
        if self.max_message_bytes > ByteSize::gib(1) {
            return Err(invalid("max_message_bytes", "must be at most 1 GiB".into()));
        }
        if self.max_block_bytes.as_u64() + MESSAGE_HEADROOM > self.max_message_bytes.as_u64() {
            let reason = format!(
                "{} leaves no room for a {} block and its request",
                self.max_message_bytes, self.max_block_bytes
            );
            return Err(invalid("max_message_bytes", reason));
        }
        Ok(())
    }

    fn validate_ssd(&self) -> Result<(), ConfigError> {
        if self
            .data_dir
            .as_ref()
            .is_some_and(|dir| dir.as_os_str().is_empty())
        {
            return Err(invalid("data_dir", "must not be empty".into()));
        }
        let dir = self.data_dir.clone().unwrap_or_default();
        let ssd = self.ssd_config_in(&dir);
        ssd.validate().map_err(|e| match e {
            ConfigError::Invalid {
                field: "segment_bytes",
                reason,
            } => invalid("segment_size", reason),
            other => other,
        })?;
        let largest_record = self.max_block_bytes.as_u64() + RECORD_OVERHEAD;
        if largest_record > ssd.segment_bytes.as_u64() {
            let reason = format!(
                "{} cannot hold a {} block",
                ssd.segment_bytes, self.max_block_bytes
            );
            return Err(invalid("segment_size", reason));
        }
        if self.data_dir.is_some() && largest_record > self.ssd_capacity.as_u64() {
            let reason = format!(
                "{} cannot hold a {} block",
                self.ssd_capacity, self.max_block_bytes
            );
            return Err(invalid("ssd_capacity", reason));
        }
        Ok(())
    }

    fn validate_metrics(&self) -> Result<(), ConfigError> {
        let Some(addr) = self.metrics_listen.addr() else {
            return Ok(());
        };
        if addr.port() == 0 {
            let reason = "port 0 would leave the endpoint's port unknown".into();
            return Err(invalid("metrics_listen", reason));
        }
        let same_ip = addr.ip() == self.listen.ip()
            || addr.ip().is_unspecified()
            || self.listen.ip().is_unspecified();
        if same_ip && addr.port() == self.listen.port() {
            let reason = format!("{addr} clashes with listen {}", self.listen);
            return Err(invalid("metrics_listen", reason));
        }
        Ok(())
    }

    /// The ssd tier's settings, when a data directory is set.
    pub fn ssd_config(&self) -> Option<SsdConfig> {
        self.data_dir.as_ref().map(|dir| self.ssd_config_in(dir))
    }

    fn ssd_config_in(&self, data_dir: &Path) -> SsdConfig {
        SsdConfig {
            dir: data_dir.join("segments"),
            segment_bytes: self.segment_size,
            io_engine: self.io_engine,
            compaction_threshold: self.compaction_threshold,
        }
    }

    /// Directory of the RocksDB block index, when a data directory is set.
    pub fn index_dir(&self) -> Option<PathBuf> {
        self.data_dir.as_ref().map(|dir| dir.join("index"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn toml_overrides_only_the_fields_it_names() {
        let config: Config = toml::from_str("dram_capacity = \"512MiB\"").unwrap();
        assert_eq!(config.dram_capacity, ByteSize::mib(512));
        assert_eq!(config.listen, Config::default().listen);
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(toml::from_str::<Config>("dram_capacty = \"1GiB\"").is_err());
    }

    #[test]
    fn a_block_limit_at_the_message_limit_names_max_message_bytes() {
        let config = Config {
            max_block_bytes: ByteSize::mib(72),
            ..Config::default()
        };
        let err = config.validate().unwrap_err();
        assert!(matches!(
            err,
            ConfigError::Invalid {
                field: "max_message_bytes",
                ..
            }
        ));
    }

    #[test]
    fn a_bad_compaction_threshold_names_its_field() {
        let config = Config {
            data_dir: Some("/tmp/x".into()),
            compaction_threshold: 1.5,
            ..Config::default()
        };
        let err = config.validate().unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::Invalid {
                    field: "compaction_threshold",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn durability_and_engine_parse_from_toml() {
        let config: Config =
            toml::from_str("durability = \"sync\"\nio_engine = \"psync\"\ndata_dir = \"d\"")
                .unwrap();
        assert_eq!(config.durability, Durability::Sync);
        assert_eq!(config.io_engine, IoEngineKind::Psync);
        assert!(toml::from_str::<Config>("durability = \"always\"").is_err());
    }

    #[test]
    fn a_tiny_dram_capacity_names_its_field() {
        let config = Config {
            dram_capacity: ByteSize::kib(1),
            ..Config::default()
        };
        let err = config.validate().unwrap_err();
        assert!(matches!(
            err,
            ConfigError::Invalid {
                field: "dram_capacity",
                ..
            }
        ));
    }

    fn field_of(config: &Config) -> &'static str {
        match config.validate() {
            Err(ConfigError::Invalid { field, .. }) => field,
            other => panic!("expected an invalid field, got {other:?}"),
        }
    }

    #[test]
    fn ssd_fields_are_checked_without_a_data_directory() {
        let config = Config {
            compaction_threshold: -0.1,
            ..Config::default()
        };
        assert_eq!(field_of(&config), "compaction_threshold");
        let config = Config {
            segment_size: ByteSize::kib(100),
            ..Config::default()
        };
        assert_eq!(field_of(&config), "segment_size");
    }

    #[test]
    fn an_ssd_capacity_below_one_block_names_its_field() {
        let config = Config {
            data_dir: Some("/tmp/x".into()),
            ssd_capacity: ByteSize::mib(1),
            ..Config::default()
        };
        assert_eq!(field_of(&config), "ssd_capacity");
        let config = Config {
            data_dir: Some("".into()),
            ..Config::default()
        };
        assert_eq!(field_of(&config), "data_dir");
    }

    #[test]
    fn metrics_on_the_service_port_or_port_zero_are_refused() {
        let mut config = Config {
            metrics_listen: "0.0.0.0:50051".parse().unwrap(),
            ..Config::default()
        };
        assert_eq!(field_of(&config), "metrics_listen");
        config.metrics_listen = "127.0.0.1:0".parse().unwrap();
        assert_eq!(field_of(&config), "metrics_listen");
        config.metrics_listen = MetricsListen::OFF;
        config.validate().unwrap();
    }

    #[test]
    fn tier_codecs_parse_from_toml_and_a_bad_name_names_its_field() {
        let config: Config = toml::from_str("ssd_codec = \"int8+zstd:1\"").unwrap();
        let codecs = config.tier_codecs().unwrap();
        let int8 = kvtier_format::CodecSpec::int8().then_zstd(1);
        assert_eq!(codecs.ssd, TierCodec::Encode(int8));
        assert_eq!(codecs.dram, TierCodec::Keep);
        let config = Config {
            dram_codec: "int3".into(),
            ..Config::default()
        };
        assert_eq!(field_of(&config), "dram_codec");
    }

    #[test]
    fn metrics_listen_reads_an_address_or_empty_from_toml() {
        let config: Config = toml::from_str("metrics_listen = \"\"").unwrap();
        assert_eq!(config.metrics_listen, MetricsListen::OFF);
        let config: Config = toml::from_str("metrics_listen = \"0.0.0.0:9100\"").unwrap();
        assert_eq!(config.metrics_listen.addr().unwrap().port(), 9100);
        assert!(toml::from_str::<Config>("metrics_listen = \"nowhere\"").is_err());
        let printed = toml::to_string(&Config::default()).unwrap();
        assert!(
            printed.contains("metrics_listen = \"127.0.0.1:9091\""),
            "{printed}"
        );
    }
}
