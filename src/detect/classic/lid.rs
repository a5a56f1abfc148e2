//! Local intrinsic dimensionality (Ma et al. 2018, "Characterizing adversarial subspaces using
//! local intrinsic dimensionality", eq. 4): the maximum-likelihood estimate from the distances to
//! the k nearest neighbours, LID = -(1/k sum_i ln(r_i / r_k))^-1. Adversarial regions have a
//! higher LID than the clean data manifold.

use super::kd::sq_dist;
use crate::{Error, Result};
use tch::{Kind, Tensor};

/// The MLE of LID from each row's k nearest distances `[B, k]` (any order; r_k is the largest).
/// Zero distances (a duplicate of the query) carry no scale information and are replaced by the
/// smallest positive double, which keeps the logarithm finite. `[B]` f64.
pub fn mle_lid(dists: &Tensor) -> Tensor {
    let d = dists.to_kind(Kind::Double).clamp_min(f64::MIN_POSITIVE);
    let k = d.size()[1] as f64;
    let rk = d.amax([1], true);
    let mean_log = (d / rk).log().sum_dim_intlist(1, false, Kind::Double) / k;
    // All k distances equal: the sum is 0 and the estimate infinite; report a large finite LID.
    -(mean_log.clamp_max(-1e-12)).reciprocal()
}

/// LIDs of `batch` rows `[B, D]` against `reference` rows `[R, D]` with `k` neighbours. With
/// `exclude_self` a zero distance (the row itself, when the batch is the reference) is skipped.
pub fn lid_batch(
    batch: &Tensor,
    reference: &Tensor,
    k: usize,
    exclude_self: bool,
) -> Result<Tensor> {
    let r = reference.size()[0] as usize;
    let need = k + usize::from(exclude_self);
    if k == 0 || need > r {
        return Err(Error::invalid(format!(
            "LID: k = {k} needs at least {need} reference rows, got {r}"
        )));
    }
    let d = sq_dist(
        &batch.to_kind(Kind::Double),
        &reference.to_kind(Kind::Double),
    )
    .sqrt();
    let (near, _) = d.topk(need as i64, 1, false, true); // ascending
    let near = if exclude_self {
        // Drop the nearest only where it is the row itself: a distance that is zero up to the
        // round-off of the expanded square (|a|^2 + |b|^2 - 2ab leaves ~1e-7 relative), else drop
        // the farthest of the k + 1.
        let scale = near.select(1, k as i64).clamp_min(f64::MIN_POSITIVE);
        let first_zero = near.select(1, 0).le_tensor(&(scale * 1e-6)).unsqueeze(1);
        near.narrow(1, 1, k as i64)
            .where_self(&first_zero, &near.narrow(1, 0, k as i64))
    } else {
        near
    };
    Ok(mle_lid(&near))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mle_by_hand() {
        // dists 1, 2, 4: mean ln(r/4) = (ln .25 + ln .5 + 0) / 3 = -ln(8)/3 -> LID = 3 / ln 8.
        let v = mle_lid(&Tensor::from_slice(&[2.0f64, 1.0, 4.0]).view([1, 3])).double_value(&[0]);
        assert!((v - 3.0 / 8f64.ln()).abs() < 1e-12, "{v}");
    }

    #[test]
    fn batch_against_reference_and_self_exclusion() {
        // Points on a line: 0, 1, 3, 7. For x = 0 against itself with k = 2: neighbours 1, 3.
        let pts = Tensor::from_slice(&[0.0f64, 1.0, 3.0, 7.0]).view([4, 1]);
        let got: Vec<f64> = Vec::try_from(lid_batch(&pts, &pts, 2, true).unwrap()).unwrap();
        let by_hand = |a: f64, b: f64| -1.0 / (((a / b).ln() + 0.0) / 2.0);
        assert!((got[0] - by_hand(1.0, 3.0)).abs() < 1e-12);
        // x = 3: neighbours at distance 2 (from 1) and 3 (from 0).
        assert!((got[2] - by_hand(2.0, 3.0)).abs() < 1e-12);
        // A query outside the reference keeps its nearest distance: 2.5 -> 0.5 (3), 1.5 (1).
        let q = Tensor::from_slice(&[2.5f64]).view([1, 1]);
        let v = lid_batch(&q, &pts, 2, true).unwrap().double_value(&[0]);
        assert!((v - 2.0 / 3f64.ln()).abs() < 1e-12, "{v}");
        let q = Tensor::from_slice(&[2.0f64]).view([1, 1]);
        let v2 = lid_batch(&q, &pts, 3, false).unwrap().double_value(&[0]);
        // distances 1, 1, 2: mean ln(r/2) = 2 ln(.5) / 3.
        assert!((v2 - (-1.0 / (2.0 * 0.5f64.ln() / 3.0))).abs() < 1e-12);
        assert!(lid_batch(&q, &pts, 4, true).is_err());
        assert!(lid_batch(&q, &pts, 0, false).is_err());
    }
}
