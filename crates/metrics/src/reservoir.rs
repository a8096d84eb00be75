//! A window of a Scoot histogram: a uniform sample of at most [`SIZE`] values (Vitter's
//! algorithm R, as go-metrics' UniformSample), plus exact count, sum, min and max.

use std::sync::Mutex;

/// Samples kept per window, as Scoot's histograms kept.
pub(crate) const SIZE: usize = 1000;

/// The names a histogram expands to, in Scoot's order.
pub(crate) const SUFFIXES: [&str; 11] = [
    ".avg", ".count", ".max", ".min", ".sum", ".p50", ".p90", ".p95", ".p99", ".p999", ".p9999",
];

const PERCENTILES: [f64; 6] = [0.5, 0.9, 0.95, 0.99, 0.999, 0.9999];

#[derive(Default)]
pub(crate) struct Reservoir {
    window: Mutex<Window>,
}

#[derive(Default)]
struct Window {
    samples: Vec<f64>,
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
}

impl Reservoir {
    pub(crate) fn record(&self, value: f64) {
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        if w.count == 0 || value < w.min {
            w.min = value;
        }
        if w.count == 0 || value > w.max {
            w.max = value;
        }
        w.count += 1;
        w.sum += value;
        if w.samples.len() < SIZE {
            w.samples.push(value);
        } else {
            let slot = fastrand::u64(0..w.count);
            if let Some(kept) = usize::try_from(slot)
                .ok()
                .and_then(|i| w.samples.get_mut(i))
            {
                *kept = value;
            }
        }
    }

    /// The window's summary (`.avg` … `.p9999`, all zero for an empty window); the next
    /// window starts empty.
    pub(crate) fn take_summary(&self) -> Vec<(&'static str, f64)> {
        let window = std::mem::take(&mut *self.window.lock().unwrap_or_else(|e| e.into_inner()));
        let mut sorted = window.samples;
        sorted.sort_by(f64::total_cmp);
        let count = window.count as f64;
        let avg = if window.count == 0 {
            0.0
        } else {
            window.sum / count
        };
        let mut summary = vec![
            (SUFFIXES[0], avg),
            (SUFFIXES[1], count),
            (SUFFIXES[2], window.max),
            (SUFFIXES[3], window.min),
            (SUFFIXES[4], window.sum),
        ];
        for (suffix, p) in SUFFIXES[5..].iter().zip(PERCENTILES) {
            summary.push((suffix, percentile(&sorted, p)));
        }
        summary
    }
}

/// go-metrics' percentile: position `p·(n+1)` in the sorted sample, interpolated between
/// neighbours, clamped to the ends.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let n = sorted.len();
    if n == 0 {
        return 0.0;
    }
    let pos = p * (n as f64 + 1.0);
    if pos < 1.0 {
        return sorted[0];
    }
    if pos >= n as f64 {
        return sorted[n - 1];
    }
    let below = pos.floor();
    let lower = sorted[below as usize - 1];
    let upper = sorted[below as usize];
    lower + (pos - below) * (upper - lower)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_as_go_metrics_computes_them() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&values, 0.5), 50.5);
        assert_eq!(percentile(&values, 0.99), 99.99);
        assert_eq!(percentile(&values, 0.9999), 100.0);
        assert_eq!(percentile(&[7.0], 0.5), 7.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }

    #[test]
    fn a_window_keeps_a_bounded_sample_and_exact_totals() {
        let r = Reservoir::default();
        for i in 0..5000 {
            r.record(f64::from(i));
        }
        assert_eq!(r.window.lock().unwrap().samples.len(), SIZE);
        let summary: std::collections::BTreeMap<_, _> = r.take_summary().into_iter().collect();
        assert_eq!(summary[".count"], 5000.0);
        assert_eq!(summary[".min"], 0.0);
        assert_eq!(summary[".max"], 4999.0);
        assert_eq!(summary[".sum"], (0..5000).sum::<i32>() as f64);
        let median = summary[".p50"];
        assert!((1500.0..3500.0).contains(&median), "{median}");
        let empty: std::collections::BTreeMap<_, _> = r.take_summary().into_iter().collect();
        assert_eq!(empty[".count"], 0.0);
    }
}
