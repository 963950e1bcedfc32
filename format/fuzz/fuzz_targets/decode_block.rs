//! Feeds arbitrary bytes to every reader entry point of the block format. The first input
//! byte chooses whether the checksums are fixed up first, so that the fuzzer reaches the
//! codecs behind them instead of stopping at a checksum mismatch.
#![no_main]

use kvtier_format::header::reseal;
use kvtier_format::BlockView;
use libfuzzer_sys::fuzz_target;

/// Layers larger than this are not decoded one by one (the whole-block decode still runs).
const MAX_LAYER_BYTES: usize = 1 << 24;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut block = rest.to_vec();
    if mode & 1 == 1 {
        reseal(&mut block);
    }
    let Ok(view) = BlockView::parse(&block) else {
        return;
    };
    let _ = view.verify_payload();
    if let Ok(raw) = view.decoded() {
        assert_eq!(raw.len(), view.shape.raw_bytes());
    }
    let layer_bytes = view.shape.layer_bytes();
    if layer_bytes <= MAX_LAYER_BYTES {
        let mut out = vec![0u8; layer_bytes];
        for layer in 0..view.shape.n_layers as usize {
            let _ = view.decode_layer(layer, &mut out);
        }
    }
});
