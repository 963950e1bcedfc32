//! Asymmetric integer quantization (`int8`, `int4`), as KIVI arranges it: keys per channel,
//! values per token.
//!
//! Each K or V tensor `[kv_head][token][head_dim]` is cut into groups that share an offset
//! and a step; element `x` is stored as `q = round((x - offset) / step)` in `0..=levels`
//! and read back as `offset + q * step`.
//! - Keys: a group is one (kv_head, channel) over `group` consecutive tokens (int8: all
//!   tokens of the block), because a few key channels carry much larger magnitudes.
//! - Values: a group is one (kv_head, token) over `group` consecutive channels (int8: the
//!   whole head dimension).
//!
//! A group at the end of an axis may be shorter. Offsets and steps are stored as
//! [`ScaleFormat`] says: f16 and f16 for int8, f16 and an 8-bit step for int4 (their
//! size dominates int4's ratio), f32 and f32 when a block holds a magnitude above
//! [`super::scale::NARROW_LIMIT`].
//!
//! Layer layout: for K then V, all offsets, all steps (in group order: head, then token
//! group, then channel for keys; head, then token, then channel group for values), then
//! the codes row by row (`[kv_head][token]`), a row of int4 codes packed two to a byte,
//! low nibble first, padded to whole bytes.
//!
//! Error bound, per element of a group with minimum `min` and maximum `max`:
//! `|decoded - x| <= step / 2` with `step <= r / levels * (1 + 2^-10) + 2^-24` for int8
//! and `step <= r / levels * (1 + 2^-10) * (1 + 2^-3) + 2^-17` for int4, where
//! `r = max - min + 2^-10 * |min| + 2^-24` (the offset rounds down to f16), plus f32
//! arithmetic (relative 2^-20 of `|min| + |max| + levels * step`) and the rounding of the
//! result to the block's dtype (half an ulp).

use super::elements::Elements;
use super::scale::ScaleFormat;
use super::LayerTransform;
use crate::{BlockShape, DType, FormatError};

pub(crate) struct Affine {
    /// 8 or 4.
    pub(crate) bits: u8,
    /// Group length; `None` means a whole axis.
    pub(crate) group: Option<u16>,
    pub(crate) scales: ScaleFormat,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Keys,
    Values,
}

/// How a tensor of a shape is cut into groups.
struct Geometry {
    heads: usize,
    tokens: usize,
    dim: usize,
    /// Tokens per key group.
    key_group: usize,
    /// Channels per value group.
    value_group: usize,
}

impl Geometry {
    fn new(shape: &BlockShape, group: Option<u16>) -> Self {
        let (tokens, dim) = (shape.block_tokens as usize, shape.head_dim as usize);
        let cut = |axis: usize| group.map_or(axis, |g| usize::from(g).clamp(1, axis));
        Geometry {
            heads: shape.n_kv_heads as usize,
            tokens,
            dim,
            key_group: cut(tokens),
            value_group: cut(dim),
        }
    }

    fn elements(&self) -> usize {
        self.heads * self.tokens * self.dim
    }

    /// Groups per row of `role`'s parameters and the first one of row (head, token).
    fn params_per_row(&self, role: Role) -> usize {
        match role {
            Role::Keys => self.dim,
            Role::Values => self.dim.div_ceil(self.value_group),
        }
    }

    fn param_row_start(&self, role: Role, head: usize, token: usize) -> usize {
        match role {
            Role::Keys => {
                let groups = self.tokens.div_ceil(self.key_group);
                (head * groups + token / self.key_group) * self.dim
            }
            Role::Values => (head * self.tokens + token) * self.params_per_row(role),
        }
    }

    fn params(&self, role: Role) -> usize {
        match role {
            Role::Keys => self.heads * self.tokens.div_ceil(self.key_group) * self.dim,
            Role::Values => self.heads * self.tokens * self.params_per_row(role),
        }
    }
}

/// A tensor's offsets and steps, one of each per group.
struct Params {
    offsets: Vec<f32>,
    steps: Vec<f32>,
}

impl Affine {
    fn levels(&self) -> u32 {
        (1 << self.bits) - 1
    }

    fn row_code_bytes(&self, dim: usize) -> usize {
        if self.bits == 8 {
            dim
        } else {
            dim.div_ceil(2)
        }
    }

    fn tensor_len(&self, g: &Geometry, role: Role) -> usize {
        let per_param = self.scales.offset_bytes() + self.scales.step_bytes();
        g.params(role) * per_param + g.heads * g.tokens * self.row_code_bytes(g.dim)
    }

    fn fit(&self, g: &Geometry, role: Role, x: &[f32]) -> Params {
        let n = g.params(role);
        let mut params = Params {
            offsets: Vec::with_capacity(n),
            steps: Vec::with_capacity(n),
        };
        let mut push = |min: f32, max: f32| {
            let (offset, step) = self.scales.fit(min, max, self.levels());
            params.offsets.push(offset);
            params.steps.push(step);
        };
        match role {
            Role::Keys => {
                let (mut lo, mut hi) = (vec![0f32; g.dim], vec![0f32; g.dim]);
                for head in x.chunks_exact(g.tokens * g.dim) {
                    for rows in head.chunks(g.key_group * g.dim) {
                        lo.fill(f32::INFINITY);
                        hi.fill(f32::NEG_INFINITY);
                        for row in rows.chunks_exact(g.dim) {
                            for ((l, h), &v) in lo.iter_mut().zip(hi.iter_mut()).zip(row) {
                                *l = l.min(v);
                                *h = h.max(v);
                            }
                        }
                        lo.iter().zip(&hi).for_each(|(&l, &h)| push(l, h));
                    }
                }
            }
            Role::Values => {
                for group in x
                    .chunks_exact(g.dim)
                    .flat_map(|row| row.chunks(g.value_group))
                {
                    let lo = group.iter().fold(f32::INFINITY, |m, &v| m.min(v));
                    let hi = group.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
                    push(lo, hi);
                }
            }
        }
        params
    }

    fn encode_tensor(&self, g: &Geometry, role: Role, x: &[f32], out: &mut Vec<u8>) {
        let params = self.fit(g, role, x);
        for &offset in &params.offsets {
            self.scales.put_offset(offset, out);
        }
        for &step in &params.steps {
            self.scales.put_step(step, out);
        }
        let levels = self.levels() as f32;
        let (mut offsets, mut inverses) = (vec![0f32; g.dim], vec![0f32; g.dim]);
        let mut codes = vec![0u8; g.dim];
        for (r, row) in x.chunks_exact(g.dim).enumerate() {
            let start = g.param_row_start(role, r / g.tokens, r % g.tokens);
            for c in 0..g.dim {
                let p = start
                    + match role {
                        Role::Keys => c,
                        Role::Values => c / g.value_group,
                    };
                offsets[c] = params.offsets[p];
                let step = params.steps[p];
                inverses[c] = if step > 0.0 { 1.0 / step } else { 0.0 };
            }
            for (((q, &v), &o), &inv) in codes.iter_mut().zip(row).zip(&offsets).zip(&inverses) {
                // `as` truncates the non-negative sum, which rounds half up.
                *q = (((v - o) * inv).max(0.0) + 0.5).min(levels) as u8;
            }
            if self.bits == 8 {
                out.extend_from_slice(&codes);
            } else {
                out.extend(
                    codes
                        .chunks(2)
                        .map(|p| p[0] | (p.get(1).copied().unwrap_or(0) << 4)),
                );
            }
        }
    }

    fn read_params(&self, g: &Geometry, role: Role, encoded: &[u8]) -> (Params, usize) {
        let n = g.params(role);
        let offset_end = n * self.scales.offset_bytes();
        let step_end = offset_end + n * self.scales.step_bytes();
        let mut params = Params {
            offsets: vec![0f32; n],
            steps: vec![0f32; n],
        };
        self.scales
            .read_offsets(&encoded[..offset_end], &mut params.offsets);
        self.scales
            .read_steps(&encoded[offset_end..step_end], &mut params.steps);
        (params, step_end)
    }

    fn decode_tensor(
        &self,
        g: &Geometry,
        role: Role,
        dtype: DType,
        encoded: &[u8],
        raw: &mut [u8],
    ) {
        let (params, codes_start) = self.read_params(g, role, encoded);
        let codes = &encoded[codes_start..];
        let row_bytes = self.row_code_bytes(g.dim);
        let width = dtype.size();
        let mut elements = Elements::new(dtype);
        let mut head_values = vec![0f32; g.tokens * g.dim];
        let mut unpacked = vec![0u8; g.dim];
        for (head, (head_codes, head_raw)) in codes
            .chunks_exact(g.tokens * row_bytes)
            .zip(raw.chunks_exact_mut(g.tokens * g.dim * width))
            .enumerate()
        {
            for (token, (row_codes, values)) in head_codes
                .chunks_exact(row_bytes)
                .zip(head_values.chunks_exact_mut(g.dim))
                .enumerate()
            {
                let q = if self.bits == 8 {
                    row_codes
                } else {
                    unpack_nibbles(row_codes, &mut unpacked);
                    &unpacked[..]
                };
                let start = g.param_row_start(role, head, token);
                let n = g.params_per_row(role);
                let offsets = &params.offsets[start..start + n];
                let steps = &params.steps[start..start + n];
                match role {
                    Role::Keys => dequantize_channels(q, offsets, steps, values),
                    Role::Values => dequantize_groups(q, offsets, steps, g.value_group, values),
                }
            }
            elements.store(&head_values, head_raw);
        }
    }
}

fn unpack_nibbles(packed: &[u8], out: &mut [u8]) {
    for (pair, &byte) in out.chunks_mut(2).zip(packed) {
        pair[0] = byte & 0x0f;
        if let Some(high) = pair.get_mut(1) {
            *high = byte >> 4;
        }
    }
}

/// Keys: each channel has its own offset and step.
fn dequantize_channels(q: &[u8], offsets: &[f32], steps: &[f32], out: &mut [f32]) {
    for (((v, &q), &o), &s) in out.iter_mut().zip(q).zip(offsets).zip(steps) {
        *v = o + f32::from(q) * s;
    }
}

/// Values: each run of `group` channels shares an offset and a step.
fn dequantize_groups(q: &[u8], offsets: &[f32], steps: &[f32], group: usize, out: &mut [f32]) {
    let runs = out.chunks_mut(group).zip(q.chunks(group));
    for ((values, codes), (&o, &s)) in runs.zip(offsets.iter().zip(steps)) {
        for (v, &q) in values.iter_mut().zip(codes) {
            *v = o + f32::from(q) * s;
        }
    }
}

impl LayerTransform for Affine {
    fn encoded_len(&self, shape: &BlockShape) -> usize {
        let g = Geometry::new(shape, self.group);
        self.tensor_len(&g, Role::Keys) + self.tensor_len(&g, Role::Values)
    }

    fn encode(&self, shape: &BlockShape, raw: &[u8], out: &mut Vec<u8>) -> Result<(), FormatError> {
        let g = Geometry::new(shape, self.group);
        let mut elements = Elements::new(shape.dtype);
        let mut values = vec![0f32; g.elements()];
        let (keys, vals) = raw.split_at(shape.tensor_bytes());
        elements.load(keys, &mut values);
        self.encode_tensor(&g, Role::Keys, &values, out);
        elements.load(vals, &mut values);
        self.encode_tensor(&g, Role::Values, &values, out);
        Ok(())
    }

    fn decode(&self, shape: &BlockShape, encoded: &[u8], raw: &mut [u8]) {
        let g = Geometry::new(shape, self.group);
        let (keys_enc, vals_enc) = encoded.split_at(self.tensor_len(&g, Role::Keys));
        let (keys, vals) = raw.split_at_mut(shape.tensor_bytes());
        self.decode_tensor(&g, Role::Keys, shape.dtype, keys_enc, keys);
        self.decode_tensor(&g, Role::Values, shape.dtype, vals_enc, vals);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(block_tokens: u32, head_dim: u32) -> BlockShape {
        BlockShape {
            n_layers: 1,
            n_kv_heads: 2,
            block_tokens,
            head_dim,
            dtype: DType::F32,
        }
    }

    fn int4(group: u16) -> Affine {
        Affine {
            bits: 4,
            group: Some(group),
            scales: ScaleFormat::HalfCoarse,
        }
    }

    #[test]
    fn partial_groups_and_odd_rows_are_counted_in_the_length() {
        // Keys: 2 heads x ceil(10 / 4) token groups x 7 channels; values: 2 heads x 10
        // tokens x ceil(7 / 4) channel groups; 3 bytes each. Codes: 20 rows of 4 bytes.
        let expected = (2 * 3 * 7 + 2 * 10 * 2) * 3 + 2 * 20 * 4;
        assert_eq!(int4(4).encoded_len(&shape(10, 7)), expected);
        let raw = vec![0u8; shape(10, 7).layer_bytes()];
        let mut out = Vec::new();
        int4(4).encode(&shape(10, 7), &raw, &mut out).unwrap();
        assert_eq!(out.len(), expected);
    }

    #[test]
    fn nibbles_pack_low_first_and_unpack_back() {
        let shape = shape(1, 3);
        let values: Vec<f32> = [0.0f32, 15.0, 7.0, 15.0, 0.0, 7.0].repeat(2);
        let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut out = Vec::new();
        int4(64).encode(&shape, &raw, &mut out).unwrap();
        let mut back = vec![0u8; raw.len()];
        int4(64).decode(&shape, &out, &mut back);
        assert_eq!(back, raw);
    }

    #[test]
    fn each_key_channel_gets_its_own_step() {
        let shape = shape(4, 2);
        let g = Geometry::new(&shape, None);
        let affine = Affine {
            bits: 8,
            group: None,
            scales: ScaleFormat::Half,
        };
        let x: Vec<f32> = (0..8)
            .map(|i| {
                if i % 2 == 0 {
                    i as f32
                } else {
                    100.0 * i as f32
                }
            })
            .collect();
        let params = affine.fit(&g, Role::Keys, &x);
        assert_eq!(params.offsets[..2], [0.0, 100.0]);
        assert!(params.steps[0] < params.steps[1] / 50.0);
    }
}
