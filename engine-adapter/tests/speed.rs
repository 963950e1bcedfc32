//! Prefill and decode speed of SmolLM2 on this machine. Ignored by default (it takes
//! about half a minute); run with
//! `cargo test -p kvtier-engine --test speed -- --ignored --nocapture`.

mod common;

use std::time::Instant;

use kvtier_engine::{LoadedModel, Sampler};

fn long_prompt(loaded: &LoadedModel, n: usize) -> Vec<u32> {
    let mut ids = Vec::new();
    for text in common::texts() {
        ids.extend(loaded.tokenizer.encode(&text).expect("encode"));
        if ids.len() >= n {
            break;
        }
    }
    assert!(ids.len() >= n, "not enough text for {n} tokens");
    ids.truncate(n);
    ids
}

fn decode_ms_per_token(
    loaded: &LoadedModel,
    cache: &mut kvtier_engine::KvCache,
    first: u32,
) -> f64 {
    let steps = 16;
    let mut sampler = Sampler::greedy();
    let mut next = first;
    let start = Instant::now();
    for _ in 0..steps {
        let logits = loaded
            .model
            .forward_last_logits(&[next], cache)
            .expect("decode");
        next = sampler.sample(&logits);
    }
    start.elapsed().as_secs_f64() * 1000.0 / steps as f64
}

#[test]
#[ignore = "measures speed; run explicitly"]
fn smollm2_prefill_and_decode_speed() {
    // As a serving binary should (see the `model` module docs): fixes the thread count so
    // candle does not recount the CPUs on every matrix product.
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        std::env::set_var(
            "RAYON_NUM_THREADS",
            rayon::current_num_threads().to_string(),
        );
    }
    let start = Instant::now();
    let loaded = LoadedModel::load(&common::smollm2_path()).expect("load");
    println!("load: {:.2} s", start.elapsed().as_secs_f64());

    let ids = long_prompt(&loaded, 2000);
    let mut cache = loaded.model.new_cache().expect("cache");
    for (from, to) in [(0, 1000), (1000, 2000)] {
        let start = Instant::now();
        let logits = loaded
            .model
            .forward_last_logits(&ids[from..to], &mut cache)
            .expect("prefill");
        let secs = start.elapsed().as_secs_f64();
        println!(
            "prefill {from}..{to}: {secs:.2} s, {:.0} tokens/s",
            (to - from) as f64 / secs
        );
        let first = Sampler::greedy().sample(&logits);
        let ms = decode_ms_per_token(&loaded, &mut cache, first);
        println!("decode at ~{to} tokens of context: {ms:.1} ms/token");
        cache.truncate(to);
    }
    println!("kv cache holds {} MiB", cache.bytes() >> 20);
}
