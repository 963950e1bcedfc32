//! A prefix whose layers stop arriving mid-stream is given up at the fetch deadline: the
//! prompt then computes from scratch instead of waiting for the store.

mod common;

use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use kvtier_client::{Key, Namespace};
use kvtier_engine::connector::{
    ConnectorError, KvConnector, LayerFeed, LoadReport, SaveBlock, SaveReport,
};
use kvtier_engine::engine::{namespace_fields, Engine};
use kvtier_engine::KvCache;

const BLOCK_TOKENS: u32 = 4;
const DEADLINE: Duration = Duration::from_millis(300);

type LayerSender = Sender<Result<Vec<Bytes>, ConnectorError>>;

/// Holds every block, sends layer 0 of a prefix and then nothing more, ever.
struct Stalled {
    layer_bytes: usize,
    /// Keeps the streams open, so their feeds wait instead of failing.
    streams: Mutex<Vec<LayerSender>>,
}

impl KvConnector for Stalled {
    async fn lookup(&self, keys: &[Key]) -> Result<usize, ConnectorError> {
        Ok(keys.len())
    }

    async fn load(&self, _: &[Key], _: &mut KvCache) -> Result<LoadReport, ConnectorError> {
        Ok(LoadReport::default())
    }

    async fn save(&self, _: Vec<SaveBlock>) -> Result<SaveReport, ConnectorError> {
        Ok(SaveReport::default())
    }

    async fn load_layers(&self, keys: &[Key]) -> Result<LayerFeed, ConnectorError> {
        let (tx, rx) = mpsc::channel();
        self.streams.lock().unwrap().push(tx);
        let first = vec![Bytes::from(vec![0u8; self.layer_bytes]); keys.len()];
        Ok(LayerFeed::new(first, rx))
    }

    async fn prefetch(&self, _: &[Key], _: Option<&str>) -> Result<u32, ConnectorError> {
        Ok(0)
    }
}

#[tokio::test]
async fn layers_that_stop_arriving_are_given_up_at_the_fetch_deadline() {
    let model = Arc::new(common::load_stories());
    let namespace = Namespace::from_fields(&namespace_fields(&model.info, "test", BLOCK_TOKENS));
    let shape = model.model.kv_shape();
    let connector = Stalled {
        layer_bytes: 2 * shape.n_kv_heads * BLOCK_TOKENS as usize * shape.head_dim * 4,
        streams: Mutex::new(Vec::new()),
    };
    let engine = Engine::new(model.clone(), namespace, Some(connector))
        .with_layer_wise(true)
        .with_fetch_deadline(DEADLINE);
    let mut tokens: Vec<u32> = model.tokenizer.bos_id().into_iter().collect();
    tokens.extend(
        model
            .tokenizer
            .encode("Lily and Ben went to the park.")
            .unwrap(),
    );
    assert!(tokens.len() > 2 * BLOCK_TOKENS as usize);

    let mut prefill = engine.begin(tokens.clone(), true).await.unwrap();
    assert!(prefill.report().cached_tokens > 0, "layer 0 arrived");
    assert!(prefill.waits_for_store(), "the other layers have not");
    tokio::time::sleep(DEADLINE + Duration::from_millis(100)).await;
    assert!(
        !prefill.waits_for_store(),
        "past the deadline the prefix is given up"
    );
    assert!(prefill.report().fell_back);
    assert_eq!(prefill.report().cached_tokens, 0);
    assert_eq!(
        prefill.remaining(),
        tokens.len(),
        "the whole prompt is computed"
    );
}
