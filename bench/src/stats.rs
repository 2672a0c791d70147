//! Summary statistics of repeated measurements: median and 90th percentile (nearest rank).
//!
//! Pure functions over samples; this module must not measure, print or touch the system.

use std::time::Duration;

/// Median and p90 of a set of samples, in the samples' unit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Summary {
    /// Number of samples.
    pub n: usize,
    /// Median (mean of the two middle samples when `n` is even).
    pub median: f64,
    /// 90th percentile by the nearest-rank method: the `ceil(0.9 n)`-th smallest sample.
    pub p90: f64,
}

impl Summary {
    /// Summarise `samples` (any order). `None` when there are none or one is not finite.
    pub(crate) fn of(samples: &[f64]) -> Option<Summary> {
        if samples.is_empty() || samples.iter().any(|s| !s.is_finite()) {
            return None;
        }
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        Some(Summary {
            n: sorted.len(),
            median: median_sorted(&sorted),
            p90: percentile_sorted(&sorted, 90),
        })
    }

    /// Summarise durations in milliseconds.
    pub(crate) fn of_millis(samples: &[Duration]) -> Option<Summary> {
        let ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
        Summary::of(&ms)
    }

    /// A single value (n = 1; median = p90 = value).
    pub(crate) fn single(value: f64) -> Summary {
        Summary {
            n: 1,
            median: value,
            p90: value,
        }
    }
}

/// Median of sorted, non-empty samples.
fn median_sorted(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

/// Nearest-rank percentile of sorted, non-empty samples: the `ceil(pct/100 · n)`-th smallest.
fn percentile_sorted(sorted: &[f64], pct: usize) -> f64 {
    let n = sorted.len();
    let rank = (pct * n).div_ceil(100).clamp(1, n);
    sorted[rank - 1]
}

/// The 99th percentile (nearest rank) of durations, in milliseconds; `None` without samples.
pub(crate) fn p99_millis(samples: &[Duration]) -> Option<f64> {
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    if ms.is_empty() {
        return None;
    }
    ms.sort_by(f64::total_cmp);
    Some(percentile_sorted(&ms, 99))
}

/// `num / den`, or `None` when the denominator is not a positive finite number.
pub(crate) fn ratio(num: f64, den: f64) -> Option<f64> {
    (den.is_finite() && den > 0.0 && num.is_finite()).then(|| num / den)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(Summary::of(&[3.0, 1.0, 2.0]).map(|s| s.median), Some(2.0));
        assert_eq!(
            Summary::of(&[4.0, 1.0, 3.0, 2.0]).map(|s| s.median),
            Some(2.5)
        );
        assert_eq!(Summary::of(&[7.0]).map(|s| s.median), Some(7.0));
    }

    #[test]
    fn p90_is_nearest_rank() {
        // 1..=10: ceil(0.9 * 10) = 9th smallest.
        let ten: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(Summary::of(&ten).map(|s| s.p90), Some(9.0));
        // 1..=20 reversed: 18th smallest, regardless of input order.
        let twenty: Vec<f64> = (1..=20).rev().map(f64::from).collect();
        assert_eq!(Summary::of(&twenty).map(|s| s.p90), Some(18.0));
        // 1..=3: ceil(2.7) = 3rd; a single sample is its own p90.
        assert_eq!(Summary::of(&[2.0, 3.0, 1.0]).map(|s| s.p90), Some(3.0));
        assert_eq!(Summary::of(&[5.0]).map(|s| s.p90), Some(5.0));
        // One outlier in 11 samples lands above p90 (10th smallest of 11).
        let mut s = vec![1.0; 10];
        s.push(1000.0);
        assert_eq!(Summary::of(&s).map(|s| s.p90), Some(1.0));
    }

    #[test]
    fn empty_or_non_finite_samples_have_no_summary() {
        assert_eq!(Summary::of(&[]), None);
        assert_eq!(Summary::of(&[1.0, f64::NAN]), None);
    }

    #[test]
    fn durations_become_milliseconds() {
        let s = Summary::of_millis(&[
            Duration::from_micros(1500),
            Duration::from_millis(3),
            Duration::from_millis(1),
        ]);
        assert_eq!(s.map(|s| s.n), Some(3));
        assert_eq!(s.map(|s| s.median), Some(1.5));
        assert_eq!(s.map(|s| s.p90), Some(3.0));
    }

    #[test]
    fn ratio_refuses_zero_denominators() {
        assert_eq!(ratio(3.0, 2.0), Some(1.5));
        assert_eq!(ratio(3.0, 0.0), None);
        assert_eq!(ratio(f64::INFINITY, 1.0), None);
    }
}
