//! Tiers that hold blocks. Issue #2 needs only [`dram`]; every tier keeps what it holds
//! prefix-closed: a block is only stored while its parent is, and eviction takes chain tails.

pub mod dram;
