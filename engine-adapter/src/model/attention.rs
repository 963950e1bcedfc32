//! Causal grouped-query attention over the cached keys and values.
//!
//! Query heads `j * group .. (j + 1) * group` share KV head `j`. Instead of repeating K
//! and V per query head, the queries of a group are stacked into one matrix, so each KV
//! head takes part in a single matrix product against the cache's memory in place.

use candle_core::{Device, Tensor};

use crate::error::Result;

/// Additive causal mask for `n` new queries at positions `pos..pos + n` attending to keys
/// `0..pos + n`: `[n, pos + n]`, `-inf` above the shifted diagonal. `None` for a single
/// query, which may attend to every key.
pub(crate) fn causal_mask(n: usize, pos: usize) -> Result<Option<Tensor>> {
    if n <= 1 {
        return Ok(None);
    }
    let total = pos + n;
    let mask: Vec<f32> = (0..n)
        .flat_map(|i| (0..total).map(move |j| if j > pos + i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Ok(Some(Tensor::from_vec(mask, (n, total), &Device::Cpu)?))
}

/// Query rows attended in one block during prefill. Each block reads only the keys up to
/// its last row, which skips most of the work the causal mask would discard.
const QUERY_BLOCK: usize = 128;

/// `q`: `[n_heads, n, head_dim]` after RoPE, for positions `t - n .. t`; `k`, `v`:
/// `[n_kv_heads, t, head_dim]`, the `n` new keys last. `mask` is [`causal_mask`] for
/// these positions. Returns `[n, n_heads * head_dim]`.
pub(crate) fn attend(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    let (_, n, _) = q.dims3()?;
    let mask = match mask {
        Some(mask) if n > QUERY_BLOCK => mask,
        _ => return attend_block(q, k, v, mask),
    };
    let pos = k.dim(1)? - n;
    let mut blocks = Vec::with_capacity(n.div_ceil(QUERY_BLOCK));
    for start in (0..n).step_by(QUERY_BLOCK) {
        let rows = QUERY_BLOCK.min(n - start);
        let keys = pos + start + rows;
        blocks.push(attend_block(
            &q.narrow(1, start, rows)?,
            &k.narrow(1, 0, keys)?,
            &v.narrow(1, 0, keys)?,
            Some(&mask.narrow(0, start, rows)?.narrow(1, 0, keys)?),
        )?);
    }
    Ok(Tensor::cat(&blocks, 0)?)
}

/// [`attend`] without query blocking.
fn attend_block(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    let (n_heads, n, head_dim) = q.dims3()?;
    let (n_kv_heads, t, _) = k.dims3()?;
    let group = n_heads / n_kv_heads;

    let scale = 1.0 / (head_dim as f64).sqrt();
    let q = (q * scale)?.reshape((n_kv_heads, group * n, head_dim))?;
    let mut scores = q.matmul(&k.t()?)?;
    if let Some(mask) = mask {
        scores = scores
            .reshape((n_kv_heads, group, n, t))?
            .broadcast_add(mask)?
            .reshape((n_kv_heads, group * n, t))?;
    }
    let probs = candle_nn::ops::softmax_last_dim(&scores)?;
    let out = probs.matmul(v)?;
    let out = out
        .reshape((n_heads, n, head_dim))?
        .transpose(0, 1)?
        .reshape((n, n_heads * head_dim))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::*;

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        let d = (a - b).unwrap().abs().unwrap().flatten_all().unwrap();
        d.max(0).unwrap().to_scalar().unwrap()
    }

    #[test]
    fn query_blocks_compute_the_same_attention_as_one_block() {
        let (n_heads, n_kv_heads, head_dim, pos, n) = (6, 2, 16, 50, 3 * QUERY_BLOCK + 7);
        let rand = |dims: (usize, usize, usize)| Tensor::randn(0f32, 1.0, dims, &Device::Cpu);
        let q = rand((n_heads, n, head_dim)).unwrap();
        let k = rand((n_kv_heads, pos + n, head_dim)).unwrap();
        let v = rand((n_kv_heads, pos + n, head_dim)).unwrap();
        let mask = causal_mask(n, pos).unwrap();

        let blocked = attend(&q, &k, &v, mask.as_ref()).unwrap();
        let whole = attend_block(&q, &k, &v, mask.as_ref()).unwrap();
        assert_eq!(blocked.dims(), &[n, n_heads * head_dim]);
        assert!(max_diff(&blocked, &whole) < 1e-5);
    }

    #[test]
    fn a_single_query_sees_every_key() {
        assert!(causal_mask(1, 10).unwrap().is_none());
        let mask: Vec<Vec<f32>> = causal_mask(2, 1).unwrap().unwrap().to_vec2().unwrap();
        assert_eq!(mask[0], [0.0, 0.0, f32::NEG_INFINITY]);
        assert_eq!(mask[1], [0.0, 0.0, 0.0]);
    }
}
