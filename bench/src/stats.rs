//! Samples in microseconds, their percentiles and a log-bucketed histogram.

use serde::Serialize;

/// A set of latency samples (µs) with the figures the tables show.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Samples {
    pub count: usize,
    pub p50_us: f64,
    pub p99_us: f64,
    pub min_us: f64,
    pub max_us: f64,
    /// `[upper bound µs, count]`, buckets 1-2-5 per decade, from 1 µs.
    pub histogram: Vec<(f64, usize)>,
    /// Every sample, in the order taken.
    pub samples_us: Vec<f64>,
}

/// The `q` quantile (nearest rank) of sorted values.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((sorted.len() as f64) * q).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    quantile(&v, 0.5)
}

fn bucket_bounds() -> impl Iterator<Item = f64> {
    (0..10).flat_map(|d| [1.0, 2.0, 5.0].map(|m| m * 10f64.powi(d)))
}

impl Samples {
    pub fn new(samples_us: Vec<f64>) -> Samples {
        let mut sorted: Vec<f64> = samples_us.iter().copied().filter(|x| x.is_finite()).collect();
        sorted.sort_by(f64::total_cmp);
        let mut histogram: Vec<(f64, usize)> = Vec::new();
        let mut i = 0;
        for upper in bucket_bounds() {
            let start = i;
            while i < sorted.len() && sorted[i] <= upper {
                i += 1;
            }
            if i > start || (!histogram.is_empty() && i < sorted.len()) {
                histogram.push((upper, i - start));
            }
            if i == sorted.len() {
                break;
            }
        }
        Samples {
            count: sorted.len(),
            p50_us: quantile(&sorted, 0.5),
            p99_us: quantile(&sorted, 0.99),
            min_us: sorted.first().copied().unwrap_or(f64::NAN),
            max_us: sorted.last().copied().unwrap_or(f64::NAN),
            histogram,
            samples_us,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// `1.2 ms`, `850 µs`, `2.31 s`: three significant figures, the unit chosen by size.
pub fn fmt_us(us: f64) -> String {
    if !us.is_finite() {
        return "–".into();
    }
    let sig = |v: f64| {
        if v >= 100.0 {
            format!("{v:.0}")
        } else if v >= 10.0 {
            format!("{v:.1}")
        } else {
            format!("{v:.2}")
        }
    };
    if us >= 1e6 {
        format!("{} s", sig(us / 1e6))
    } else if us >= 1e3 {
        format!("{} ms", sig(us / 1e3))
    } else {
        format!("{} µs", sig(us))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_histogram() {
        let s = Samples::new((1..=100).map(f64::from).collect());
        assert_eq!(s.p50_us, 50.0);
        assert_eq!(s.p99_us, 99.0);
        let total: usize = s.histogram.iter().map(|(_, c)| c).sum();
        assert_eq!(total, 100);
        assert_eq!(s.histogram[0], (1.0, 1));
        assert_eq!(s.histogram.last().map(|b| b.0), Some(100.0));
    }

    #[test]
    fn empty_and_formatting() {
        assert!(Samples::new(vec![]).is_empty());
        assert_eq!(fmt_us(850.0), "850 µs");
        assert_eq!(fmt_us(1234.0), "1.23 ms");
        assert_eq!(fmt_us(2_310_000.0), "2.31 s");
        assert_eq!(fmt_us(f64::NAN), "–");
    }
}
