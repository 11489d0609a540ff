//! The paper's offline metrics as plain functions over vectors and labels, each unit-tested on a case small
//! enough to work out by hand.

use std::collections::HashMap;

use ndarray::{Array2, ArrayView2};

/// 0-based rank of `target` among the catalogue by score (ties count in the target's favour), ignoring the
/// catalogue rows in `excluded` (the query items themselves).
pub fn rank_of(scores: &[f32], target: usize, excluded: &[usize]) -> usize {
    let t = scores[target];
    let above = scores.iter().filter(|&&s| s > t).count();
    above
        - excluded
            .iter()
            .filter(|&&e| e != target && scores[e] > t)
            .count()
}

/// Cosine scores of each query (rows of `queries`, normalised) against the whole catalogue (normalised rows).
pub fn scores(queries: ArrayView2<f32>, catalogue: ArrayView2<f32>) -> Array2<f32> {
    queries.dot(&catalogue.t())
}

/// Recall@k for each k: the share of ranks below k.
pub fn recall_at(ranks: &[usize], ks: &[usize]) -> Vec<(usize, f64)> {
    ks.iter()
        .map(|&k| {
            let hits = ranks.iter().filter(|&&r| r < k).count();
            (k, hits as f64 / ranks.len().max(1) as f64)
        })
        .collect()
}

/// Probability that a positive score exceeds a negative one (ties count half): the AUC with the cosine as
/// the predicted probability (Mann-Whitney U over the two samples).
pub fn auc(positives: &[f32], negatives: &[f32]) -> f64 {
    if positives.is_empty() || negatives.is_empty() {
        return f64::NAN;
    }
    let mut all: Vec<(f32, bool)> = positives
        .iter()
        .map(|&s| (s, true))
        .chain(negatives.iter().map(|&s| (s, false)))
        .collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Average ranks (1-based) over ties, then U of the positives.
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < all.len() {
        let mut j = i;
        while j + 1 < all.len() && all[j + 1].0 == all[i].0 {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        rank_sum += all[i..=j].iter().filter(|x| x.1).count() as f64 * avg;
        i = j + 1;
    }
    let p = positives.len() as f64;
    let n = negatives.len() as f64;
    (rank_sum - p * (p + 1.0) / 2.0) / (p * n)
}

/// Normalised mutual information of two labelings of the same samples, I(A;B) / sqrt(H(A) H(B)); 1 when both
/// are constant and equal (nothing to tell apart), 0 when either is constant and the other is not.
pub fn nmi(a: &[u32], b: &[u32]) -> f64 {
    let n = a.len() as f64;
    if a.is_empty() {
        return f64::NAN;
    }
    let mut ca: HashMap<u32, f64> = HashMap::new();
    let mut cb: HashMap<u32, f64> = HashMap::new();
    let mut cab: HashMap<(u32, u32), f64> = HashMap::new();
    for (&x, &y) in a.iter().zip(b) {
        *ca.entry(x).or_default() += 1.0;
        *cb.entry(y).or_default() += 1.0;
        *cab.entry((x, y)).or_default() += 1.0;
    }
    let entropy = |c: &HashMap<u32, f64>| -> f64 {
        c.values()
            .map(|&k| {
                let p = k / n;
                -p * p.ln()
            })
            .sum()
    };
    let (ha, hb) = (entropy(&ca), entropy(&cb));
    if ha == 0.0 && hb == 0.0 {
        return 1.0;
    }
    if ha == 0.0 || hb == 0.0 {
        return 0.0;
    }
    let mi: f64 = cab
        .iter()
        .map(|(&(x, y), &k)| {
            let pxy = k / n;
            pxy * (pxy / ((ca[&x] / n) * (cb[&y] / n))).ln()
        })
        .sum();
    mi / (ha * hb).sqrt()
}

/// Kendall's tau-b between two score lists over the same items (ties handled; O(n^2), for samples).
pub fn kendall_tau(x: &[f32], y: &[f32]) -> f64 {
    let n = x.len().min(y.len());
    let (mut concordant, mut discordant, mut ties_x, mut ties_y) = (0f64, 0f64, 0f64, 0f64);
    for i in 0..n {
        for j in i + 1..n {
            let dx = x[i] - x[j];
            let dy = y[i] - y[j];
            if dx == 0.0 && dy == 0.0 {
                continue;
            } else if dx == 0.0 {
                ties_x += 1.0;
            } else if dy == 0.0 {
                ties_y += 1.0;
            } else if (dx > 0.0) == (dy > 0.0) {
                concordant += 1.0;
            } else {
                discordant += 1.0;
            }
        }
    }
    let denom = ((concordant + discordant + ties_x) * (concordant + discordant + ties_y)).sqrt();
    if denom == 0.0 {
        f64::NAN
    } else {
        (concordant - discordant) / denom
    }
}

/// Indices of the k highest scores, best first (ties by index), leaving out `skip`.
pub fn top_k(scores: &[f32], k: usize, skip: Option<usize>) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).filter(|&i| Some(i) != skip).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

/// |A ∩ B| / k for two top-k lists.
pub fn overlap(a: &[usize], b: &[usize]) -> f64 {
    let k = a.len().max(b.len());
    if k == 0 {
        return f64::NAN;
    }
    a.iter().filter(|x| b.contains(x)).count() as f64 / k as f64
}

/// Mutual ("bijective") top-1 accuracy between two aligned sets of normalised vectors in one space: row i
/// counts when i's nearest row of `b` is i and b_i's nearest row of `a` is i.
pub fn mutual_top1(a: ArrayView2<f32>, b: ArrayView2<f32>) -> f64 {
    let n = a.nrows();
    if n == 0 {
        return f64::NAN;
    }
    let s = a.dot(&b.t());
    let argmax = |it: &mut dyn Iterator<Item = f32>| {
        it.enumerate()
            .fold((0usize, f32::NEG_INFINITY), |best, (j, v)| {
                if v > best.1 { (j, v) } else { best }
            })
            .0
    };
    let hits = (0..n)
        .filter(|&i| {
            argmax(&mut s.row(i).iter().copied()) == i
                && argmax(&mut s.column(i).iter().copied()) == i
        })
        .count();
    hits as f64 / n as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embed::unit_rows;

    #[test]
    fn ranks_and_recall() {
        let scores = [0.9, 0.5, 0.7, 0.1];
        assert_eq!(rank_of(&scores, 2, &[]), 1);
        // The query item (0) is excluded: the target moves up.
        assert_eq!(rank_of(&scores, 2, &[0]), 0);
        assert_eq!(rank_of(&scores, 3, &[0]), 2);
        let r = recall_at(&[0, 1, 5, 30], &[1, 10, 25]);
        assert_eq!(r, vec![(1, 0.25), (10, 0.75), (25, 0.75)]);
    }

    #[test]
    fn auc_counts_ordered_pairs_and_half_ties() {
        assert_eq!(auc(&[0.9, 0.8], &[0.1, 0.2]), 1.0);
        assert_eq!(auc(&[0.1], &[0.9]), 0.0);
        // 0.5 vs {0.5 (tie: 1/2), 0.2 (win)} = 1.5 / 2
        assert_eq!(auc(&[0.5], &[0.5, 0.2]), 0.75);
    }

    #[test]
    fn nmi_of_known_labelings() {
        assert!((nmi(&[0, 0, 1, 1], &[5, 5, 7, 7]) - 1.0).abs() < 1e-12);
        // Independent: each pair of labels occurs once.
        assert!(nmi(&[0, 0, 1, 1], &[0, 1, 0, 1]).abs() < 1e-12);
        // A = [0,0,1,1], B = [0,0,0,1]: H(A) = ln 2, H(B) = -(3/4 ln 3/4 + 1/4 ln 1/4),
        // I = H(B) - H(B|A) = H(B) - 1/2 ln 2 ... worked out: I = 0.2158, H(B) = 0.5623.
        let v = nmi(&[0, 0, 1, 1], &[0, 0, 0, 1]);
        let (ha, hb) = (2f64.ln(), -(0.75 * 0.75f64.ln() + 0.25 * 0.25f64.ln()));
        let i = hb - 0.5 * 2f64.ln();
        assert!((v - i / (ha * hb).sqrt()).abs() < 1e-12, "{v}");
    }

    #[test]
    fn kendall_tau_of_known_orders() {
        assert_eq!(kendall_tau(&[1.0, 2.0, 3.0], &[10.0, 20.0, 30.0]), 1.0);
        assert_eq!(kendall_tau(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]), -1.0);
        // Pairs: (1,2) c, (1,3) c, (2,3) d -> (2 - 1) / 3
        assert!((kendall_tau(&[1.0, 2.0, 3.0], &[1.0, 3.0, 2.0]) - 1.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn top_k_and_overlap() {
        let s = [0.1, 0.9, 0.5, 0.7];
        assert_eq!(top_k(&s, 2, None), vec![1, 3]);
        assert_eq!(top_k(&s, 2, Some(1)), vec![3, 2]);
        assert_eq!(overlap(&[1, 3], &[3, 2]), 0.5);
    }

    #[test]
    fn mutual_top1_needs_both_directions() {
        let e = |i: usize| {
            let mut v = [0.0f32; 3];
            v[i] = 1.0;
            v
        };
        let (e1, e2, e3) = (e(0), e(1), e(2));
        let a = unit_rows(&[&e1, &e2, &e3]);
        // Swapped: nobody's nearest is its own partner.
        let swapped = unit_rows(&[&e2, &e1, &e3]);
        assert!((mutual_top1(a.view(), swapped.view()) - 1.0 / 3.0).abs() < 1e-12);
        // b = [e1, e1, e3]: row 0 hits (first of the tied b_0, b_1), row 1 (e2) is orthogonal to every b and its
        // first-best is b_0, a miss; row 2 hits. 2 of 3.
        let b = unit_rows(&[&e1, &e1, &e3]);
        assert!((mutual_top1(a.view(), b.view()) - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(mutual_top1(a.view(), a.view()), 1.0);
    }
}
