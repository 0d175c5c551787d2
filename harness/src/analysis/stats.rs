//! The statistics a verdict rests on: medians, the spread of repeats (the noise figure),
//! and the Mann-Whitney U test. U is chosen over a t-test because latency percentiles and
//! throughput across a handful of repeats are neither normal nor equal in variance; U only
//! asks whether one side's values tend to be larger than the other's.
//!
//! For the small samples a benchmark has (3 to 10 repeats) the p-value is exact: every way
//! of splitting the pooled values into two groups of the observed sizes is enumerated
//! (ties get mid-ranks), so there is no normal approximation to trust at n = 3. Larger
//! samples use the normal approximation with tie and continuity corrections.

/// The median; `None` for an empty slice or one holding a NaN.
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() || values.iter().any(|v| v.is_nan()) {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 })
}

/// The noise figure of repeated values: `(max - min) / median` in percent. `None` for fewer
/// than two values or a median of zero (a relative spread of zeros says nothing).
pub fn spread_pct(values: &[f64]) -> Option<f64> {
    if values.len() < 2 {
        return None;
    }
    let med = median(values)?;
    if med == 0.0 {
        return None;
    }
    let (lo, hi) = values.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    Some((hi - lo) / med.abs() * 100.0)
}

/// The outcome of a Mann-Whitney U test of `x` against `y`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MannWhitney {
    /// U of `x`: pairs with `x > y`, plus half the ties.
    pub u: f64,
    /// One-sided p-value for "`x` tends to be larger than `y`".
    pub p_greater: f64,
    /// One-sided p-value for "`x` tends to be smaller than `y`".
    pub p_less: f64,
    /// Whether the p-values come from the exact permutation distribution.
    pub exact: bool,
}

/// Above this many splits the exact distribution is replaced by the normal approximation
/// (C(20, 10) = 184,756 fits; it takes milliseconds).
const EXACT_LIMIT: u64 = 200_000;

/// Mann-Whitney U of `x` against `y`; `None` when either side is empty or holds a NaN.
pub fn mann_whitney(x: &[f64], y: &[f64]) -> Option<MannWhitney> {
    if x.is_empty() || y.is_empty() || x.iter().chain(y).any(|v| v.is_nan()) {
        return None;
    }
    let (n1, n2) = (x.len(), y.len());
    let pooled: Vec<f64> = x.iter().chain(y).copied().collect();
    let ranks = mid_ranks(&pooled);
    let r1: f64 = ranks[..n1].iter().sum();
    let base = (n1 * (n1 + 1)) as f64 / 2.0;
    let u = r1 - base;

    if binomial(n1 + n2, n1).is_some_and(|c| c <= EXACT_LIMIT) {
        // Every split of the pooled ranks into n1 and n2 is equally likely under H0.
        let (mut ge, mut le, mut total) = (0u64, 0u64, 0u64);
        for_each_combination(n1 + n2, n1, |idx| {
            let ui = idx.iter().map(|&i| ranks[i]).sum::<f64>() - base;
            total += 1;
            // Rank sums are multiples of 0.5: compare with a tolerance far below that.
            if ui >= u - 1e-9 {
                ge += 1;
            }
            if ui <= u + 1e-9 {
                le += 1;
            }
        });
        let total = total as f64;
        return Some(MannWhitney { u, p_greater: ge as f64 / total, p_less: le as f64 / total, exact: true });
    }

    let (n1f, n2f) = (n1 as f64, n2 as f64);
    let n = n1f + n2f;
    let mean = n1f * n2f / 2.0;
    let ties: f64 = tie_groups(&pooled).iter().map(|&t| (t * t * t - t) as f64).sum();
    let var = n1f * n2f / 12.0 * ((n + 1.0) - ties / (n * (n - 1.0)));
    if var <= 0.0 {
        // Every value equal: no evidence either way.
        return Some(MannWhitney { u, p_greater: 1.0, p_less: 1.0, exact: false });
    }
    let sd = var.sqrt();
    let z_greater = (u - mean - 0.5) / sd;
    let z_less = (u - mean + 0.5) / sd;
    Some(MannWhitney { u, p_greater: 1.0 - normal_cdf(z_greater), p_less: normal_cdf(z_less), exact: false })
}

/// Ranks 1..=n with ties sharing the mean of their ranks.
fn mid_ranks(values: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let mut ranks = vec![0.0; values.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && values[order[j + 1]] == values[order[i]] {
            j += 1;
        }
        let rank = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            ranks[k] = rank;
        }
        i = j + 1;
    }
    ranks
}

/// Sizes of the groups of equal values.
fn tie_groups(values: &[f64]) -> Vec<usize> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mut groups = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j + 1 < v.len() && v[j + 1] == v[i] {
            j += 1;
        }
        groups.push(j - i + 1);
        i = j + 1;
    }
    groups
}

fn binomial(n: usize, k: usize) -> Option<u64> {
    let k = k.min(n - k);
    let mut c: u64 = 1;
    for i in 0..k {
        c = c.checked_mul((n - i) as u64)? / (i as u64 + 1);
    }
    Some(c)
}

/// Calls `f` with every k-subset of `0..n` (indices ascending).
fn for_each_combination(n: usize, k: usize, mut f: impl FnMut(&[usize])) {
    let mut idx: Vec<usize> = (0..k).collect();
    loop {
        f(&idx);
        // Advance the rightmost index that can still move.
        let Some(i) = (0..k).rev().find(|&i| idx[i] < n - k + i) else { return };
        idx[i] += 1;
        for j in i + 1..k {
            idx[j] = idx[j - 1] + 1;
        }
    }
}

/// Standard normal CDF (Abramowitz & Stegun 7.1.26 on erf; absolute error < 1.5e-7).
fn normal_cdf(z: f64) -> f64 {
    let x = z.abs() / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * x);
    let poly =
        t * (0.254_829_592 + t * (-0.284_496_736 + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let erf = 1.0 - poly * (-x * x).exp();
    if z >= 0.0 {
        0.5 * (1.0 + erf)
    } else {
        0.5 * (1.0 - erf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_of_an_even_count_is_the_mean_of_the_middle_two() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn spread_is_the_range_relative_to_the_median() {
        assert_eq!(spread_pct(&[90.0, 100.0, 110.0]), Some(20.0));
        assert_eq!(spread_pct(&[100.0]), None);
        assert_eq!(spread_pct(&[0.0, 0.0]), None);
    }

    #[test]
    fn fully_separated_samples_of_three_reach_the_smallest_exact_p_value() {
        // 1 split in C(6,3) = 20 puts all three largest values on one side: p = 0.05.
        let r = mann_whitney(&[11.0, 12.0, 13.0], &[1.0, 2.0, 3.0]).unwrap();
        assert!(r.exact);
        assert_eq!(r.u, 9.0);
        assert!((r.p_greater - 0.05).abs() < 1e-12);
        assert!((r.p_less - 1.0).abs() < 1e-12);
    }

    #[test]
    fn identical_samples_give_no_evidence_either_way() {
        let r = mann_whitney(&[5.0, 5.0, 5.0], &[5.0, 5.0, 5.0]).unwrap();
        assert_eq!(r.p_greater, 1.0);
        assert_eq!(r.p_less, 1.0);
    }

    #[test]
    fn the_exact_distribution_matches_published_tables() {
        // n1 = n2 = 4, U = 15 (one inversion): P(U >= 15) = 2/70.
        let r = mann_whitney(&[5.0, 6.0, 7.0, 8.0], &[1.0, 2.0, 3.0, 5.5]).unwrap();
        assert_eq!(r.u, 15.0);
        assert!((r.p_greater - 2.0 / 70.0).abs() < 1e-12);
    }

    #[test]
    fn large_samples_use_the_normal_approximation() {
        let x: Vec<f64> = (0..30).map(|i| 100.0 + i as f64).collect();
        let y: Vec<f64> = (0..30).map(|i| 90.0 + i as f64).collect();
        let r = mann_whitney(&x, &y).unwrap();
        assert!(!r.exact);
        assert!(r.p_greater < 0.05, "{r:?}");
        assert!(r.p_less > 0.95, "{r:?}");
    }

    #[test]
    fn the_normal_cdf_is_accurate_at_known_points() {
        assert!((normal_cdf(0.0) - 0.5).abs() < 1e-7);
        assert!((normal_cdf(1.959_964) - 0.975).abs() < 1e-6);
        assert!((normal_cdf(-1.644_854) - 0.05).abs() < 1e-6);
    }
}
