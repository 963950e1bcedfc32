//! A codec per tier: blocks moving into a tier whose codec differs are re-encoded, reads
//! return valid blocks within the codec's error bound, and corrupt copies are never
//! re-encoded under a fresh checksum.

mod tiered_support;

use bytes::Bytes;
use bytesize::ByteSize;
use kvtier_format::codec::bounds;
use kvtier_format::{encode_block, BlockView, CodecSpec};
use kvtier_proto::v1 as pb;
use kvtier_proto::v1::kv_cache_client::KvCacheClient;
use kvtier_store::{
    Config, Durability, NamespaceCodecs, NamespaceSpec, PutOptions, Store, TierCodec,
};
use tiered_support::{config, key, namespace, FINGERPRINT};

const CHAINS: u32 = 8;
const LEN: u32 = 6;

/// Finite f32 values shaped like KV: smooth per channel with some noise.
fn values(ns: &NamespaceSpec, chain: u32, position: u32) -> Vec<f32> {
    let n = ns.shape.raw_bytes() / 4;
    let seed = (chain * 131 + position) as f32;
    (0..n)
        .map(|i| ((i % 16) as f32 * 0.37 + seed).sin() * 3.0 + ((i * 7919) % 101) as f32 * 0.01)
        .collect()
}

fn block(ns: &NamespaceSpec, chain: u32, position: u32) -> Bytes {
    let raw: Vec<u8> = values(ns, chain, position)
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    Bytes::from(encode_block(&FINGERPRINT, &ns.shape, &raw).unwrap())
}

fn put_all(store: &Store, ns: &NamespaceSpec) {
    for chain in 0..CHAINS {
        for position in 0..LEN {
            let parent = position.checked_sub(1).map(|p| key(chain, p));
            let block = block(ns, chain, position);
            let options = PutOptions::default();
            let outcome = store
                .put(ns, key(chain, position), parent, position, block, &options)
                .unwrap();
            assert!(outcome.stored);
        }
    }
}

/// Reads every block, checks it against its put values under its codec's bound and
/// returns how many came back in each of `codecs`.
fn read_all(store: &Store, ns: &NamespaceSpec, codecs: &[CodecSpec]) -> Vec<usize> {
    let mut counts = vec![0; codecs.len()];
    for chain in 0..CHAINS {
        for position in 0..LEN {
            let bytes = store.read(ns, &key(chain, position)).expect("block held");
            let view = BlockView::parse(&bytes).unwrap();
            view.verify_payload().unwrap();
            let decoded = floats(&view);
            let input = values(ns, chain, position);
            let worst = bounds::worst(&view.codec, &ns.shape, &input, &decoded);
            assert!(
                worst.ratio <= 1.0,
                "{} broke its bound: {worst:?}",
                view.codec
            );
            let index = codecs.iter().position(|c| *c == view.codec);
            counts[index.expect("an expected codec")] += 1;
        }
    }
    counts
}

fn floats(view: &BlockView<'_>) -> Vec<f32> {
    view.decoded()
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

fn small_dram(dir: &std::path::Path, durability: Durability) -> Config {
    config(dir, ByteSize::mib(1), ByteSize::mib(64), durability)
}

#[test]
fn demotion_to_ssd_reencodes_blocks_in_the_ssd_codec() {
    let dir = tempfile::tempdir().unwrap();
    let ns = namespace(64);
    let config = Config {
        ssd_codec: "int8".into(),
        ..small_dram(dir.path(), Durability::None)
    };
    let store = Store::open(&config).unwrap();
    put_all(&store, &ns);
    store.check_invariants().unwrap();

    let counts = read_all(&store, &ns, &[CodecSpec::NONE, CodecSpec::int8()]);
    assert!(counts[1] > 0, "no block was demoted and re-encoded");
    assert!(counts[0] > 0, "blocks still in dram keep the put's codec");
    store.check_invariants().unwrap();
}

#[test]
fn written_back_blocks_are_reencoded_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let ns = namespace(16);
    let config = Config {
        ssd_codec: "int4:32+zstd:1".into(),
        ..small_dram(dir.path(), Durability::Async)
    };
    {
        let store = Store::open(&config).unwrap();
        put_all(&store, &ns);
        store.flush();
    }
    let store = Store::open(&config).unwrap();
    let counts = read_all(&store, &ns, &[CodecSpec::int4(32).then_zstd(1)]);
    assert_eq!(counts[0], (CHAINS * LEN) as usize);
}

#[test]
fn a_namespace_override_beats_the_config_and_promotion_decodes_back() {
    let dir = tempfile::tempdir().unwrap();
    let ns = namespace(64);
    let config = Config {
        ssd_codec: "int8".into(),
        ..small_dram(dir.path(), Durability::None)
    };
    let store = Store::open(&config).unwrap();
    let overrides = NamespaceCodecs {
        dram: Some(TierCodec::Encode(CodecSpec::NONE)),
        ssd: Some(TierCodec::Encode(CodecSpec::int4(32))),
        ..NamespaceCodecs::default()
    };
    store.set_namespace_codecs(FINGERPRINT, overrides);
    assert_eq!(
        store.namespace_codecs(&FINGERPRINT).ssd,
        TierCodec::Encode(CodecSpec::int4(32))
    );
    put_all(&store, &ns);
    let old: Vec<_> = (0..CHAINS / 2).map(|c| key(c, 0)).collect();
    let demoted = old
        .iter()
        .filter(|k| store.lookup(std::slice::from_ref(k)) == 1)
        .count();
    assert_eq!(demoted, old.len());
    let young: Vec<_> = (CHAINS / 2..CHAINS).map(|c| key(c, 0)).collect();
    store.delete(&young);

    // The first read of a demoted block comes from ssd in int4 and promotes it to dram,
    // decoded back to the dram codec; the second read finds that copy.
    let mut promoted = 0;
    for chain in 0..CHAINS / 2 {
        for position in 0..LEN {
            let first = store.read(&ns, &key(chain, position)).unwrap();
            let first = BlockView::parse(&first).unwrap();
            let second = store.read(&ns, &key(chain, position)).unwrap();
            let second = BlockView::parse(&second).unwrap();
            if first.codec == CodecSpec::int4(32) {
                assert_eq!(second.codec, CodecSpec::NONE);
                let input = values(&ns, chain, position);
                let decoded = floats(&second);
                let worst = bounds::worst(&CodecSpec::int4(32), &ns.shape, &input, &decoded);
                assert!(worst.ratio <= 1.0, "{worst:?}");
                promoted += 1;
            }
        }
    }
    assert!(promoted > 0, "no block was demoted in int4 and promoted");
    store.check_invariants().unwrap();
}

#[test]
fn a_corrupt_copy_is_not_reencoded_under_a_fresh_checksum() {
    let dir = tempfile::tempdir().unwrap();
    let ns = namespace(64);
    let config = Config {
        ssd_codec: "int8".into(),
        ..small_dram(dir.path(), Durability::None)
    };
    let store = Store::open(&config).unwrap();
    let put = |chain: u32, position: u32| {
        let parent = position.checked_sub(1).map(|p| key(chain, p));
        let block = block(&ns, chain, position);
        let options = PutOptions::default();
        store
            .put(&ns, key(chain, position), parent, position, block, &options)
            .unwrap();
    };
    (0..LEN).for_each(|position| put(0, position));
    assert!(store.corrupt_for_test(&key(0, LEN - 1)));
    // Four times dram's capacity after it: the oldest chain is demoted.
    for chain in 1..4 * CHAINS {
        (0..LEN).for_each(|position| put(chain, position));
    }
    let chain: Vec<_> = (0..LEN).map(|p| key(0, p)).collect();
    assert_eq!(store.lookup(&chain), (LEN - 1) as usize);
    assert!(store.read(&ns, &key(0, LEN - 1)).is_none());
    store.check_invariants().unwrap();
}

#[test]
fn an_unknown_codec_in_the_config_names_its_field() {
    let config = Config {
        ssd_codec: "int3".into(),
        ..Config::default()
    };
    let err = Store::open(&config).unwrap_err().to_string();
    assert!(err.contains("ssd_codec"), "{err}");
}

fn pb_namespace(ns: &NamespaceSpec) -> pb::Namespace {
    pb::Namespace {
        tenant: ns.tenant.clone(),
        fingerprint: Bytes::copy_from_slice(&ns.fingerprint),
        layout: Some(pb::BlockLayout {
            n_layers: ns.shape.n_layers,
            n_kv_heads: ns.shape.n_kv_heads,
            block_tokens: ns.shape.block_tokens,
            head_dim: ns.shape.head_dim,
            dtype: pb::DType::DtypeF32 as i32,
        }),
    }
}

#[tokio::test]
async fn set_namespace_codecs_over_grpc_reports_the_codecs_in_force() {
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        metrics_listen: kvtier_store::metrics::MetricsListen::OFF,
        dram_codec: "lz4".into(),
        ..Config::default()
    };
    let server = kvtier_store::server::spawn(config).await.unwrap();
    let mut client = KvCacheClient::connect(format!("http://{}", server.addr))
        .await
        .unwrap();
    let request = pb::SetNamespaceCodecsRequest {
        namespace: Some(pb_namespace(&namespace(16))),
        ssd: "int4:32+zstd:1".into(),
        pinned: "keep".into(),
        ..Default::default()
    };
    let answer = client
        .set_namespace_codecs(request)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            answer.pinned.as_str(),
            answer.dram.as_str(),
            answer.ssd.as_str()
        ),
        ("keep", "lz4", "int4:32+zstd:1")
    );
    let codecs = server.store.namespace_codecs(&FINGERPRINT);
    assert_eq!(
        codecs.ssd,
        TierCodec::Encode(CodecSpec::int4(32).then_zstd(1))
    );

    let bad = pb::SetNamespaceCodecsRequest {
        namespace: Some(pb_namespace(&namespace(16))),
        dram: "int9".into(),
        ..Default::default()
    };
    let status = client.set_namespace_codecs(bad).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().starts_with("dram:"),
        "{}",
        status.message()
    );
}
