//! Shared helpers for the tiered-store tests: blocks, chains and configs in temp dirs.
#![allow(dead_code)]

use std::path::Path;

use bytes::Bytes;
use bytesize::ByteSize;
use kvtier_format::{encode_block, BlockShape, DType};
use kvtier_store::{Config, Durability, NamespaceSpec, PutOptions, Store};

pub const FINGERPRINT: [u8; 32] = [0xab; 32];

pub fn namespace(block_tokens: u32) -> NamespaceSpec {
    NamespaceSpec {
        tenant: "t".into(),
        fingerprint: FINGERPRINT,
        shape: BlockShape {
            n_layers: 2,
            n_kv_heads: 2,
            block_tokens,
            head_dim: 16,
            dtype: DType::F32,
        },
    }
}

pub fn key(chain: u32, position: u32) -> [u8; 32] {
    let mut k = [0u8; 32];
    k[..4].copy_from_slice(&chain.to_le_bytes());
    k[4..8].copy_from_slice(&position.to_le_bytes());
    k[31] = 7;
    k
}

pub fn block(ns: &NamespaceSpec, chain: u32, position: u32) -> Bytes {
    let seed = chain.wrapping_mul(7919).wrapping_add(position);
    let raw: Vec<u8> = (0..ns.shape.raw_bytes())
        .map(|i| {
            (i as u32)
                .wrapping_mul(2654435761)
                .wrapping_add(seed)
                .to_le_bytes()[1]
        })
        .collect();
    Bytes::from(encode_block(&FINGERPRINT, &ns.shape, &raw).unwrap())
}

pub fn config(dir: &Path, dram: ByteSize, ssd: ByteSize, durability: Durability) -> Config {
    Config {
        data_dir: Some(dir.to_path_buf()),
        dram_capacity: dram,
        ssd_capacity: ssd,
        durability,
        segment_size: ByteSize::mib(1),
        max_block_bytes: ByteSize::kib(256),
        ..Config::default()
    }
}

/// Puts positions `0..len` of `chain`; returns how many were stored.
pub fn put_chain(store: &Store, ns: &NamespaceSpec, chain: u32, len: u32) -> u32 {
    let mut stored = 0;
    for position in 0..len {
        let parent = position.checked_sub(1).map(|p| key(chain, p));
        let outcome = store
            .put(
                ns,
                key(chain, position),
                parent,
                position,
                block(ns, chain, position),
                &PutOptions::default(),
            )
            .unwrap();
        stored += outcome.stored as u32;
    }
    stored
}
