//! Where a screening request's time went, from the server's `pathguard_stage_duration_seconds`
//! histograms: two scrapes of `/metrics`, their difference, and per stage the mean and the
//! quantiles interpolated within buckets (as Prometheus's `histogram_quantile` does).

use std::collections::BTreeMap;

use serde::Serialize;

const METRIC: &str = "pathguard_stage_duration_seconds";

/// One stage's histogram: cumulative counts per bucket upper bound, sum and count.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StageHistogram {
    buckets: Vec<(f64, f64)>,
    sum: f64,
    count: f64,
}

/// What a run spent in one stage.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StageFigures {
    pub observations: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// The stage histograms in a Prometheus text exposition.
pub fn parse(text: &str) -> BTreeMap<String, StageHistogram> {
    let mut stages: BTreeMap<String, StageHistogram> = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with(METRIC)) {
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let Ok(value) = value.parse::<f64>() else { continue };
        let label = |name: &str| {
            let start = series.find(&format!("{name}=\""))? + name.len() + 2;
            series[start..].split('"').next().map(str::to_string)
        };
        let Some(stage) = label("stage") else { continue };
        let entry = stages.entry(stage).or_default();
        if series.starts_with(&format!("{METRIC}_bucket")) {
            let le = label("le").map(|l| if l == "+Inf" { f64::INFINITY } else { l.parse().unwrap_or(f64::NAN) });
            if let Some(le) = le.filter(|l| !l.is_nan()) {
                entry.buckets.push((le, value));
            }
        } else if series.starts_with(&format!("{METRIC}_sum")) {
            entry.sum = value;
        } else if series.starts_with(&format!("{METRIC}_count")) {
            entry.count = value;
        }
    }
    for h in stages.values_mut() {
        h.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    stages
}

impl StageHistogram {
    /// The observations made between `earlier` and `self`.
    pub fn since(&self, earlier: Option<&StageHistogram>) -> StageHistogram {
        let Some(e) = earlier else { return self.clone() };
        let buckets = self
            .buckets
            .iter()
            .map(|&(le, c)| (le, c - e.buckets.iter().find(|b| b.0 == le).map_or(0.0, |b| b.1)))
            .collect();
        StageHistogram { buckets, sum: self.sum - e.sum, count: self.count - e.count }
    }

    /// The q-quantile in seconds, linear within its bucket; the largest finite bound when it
    /// falls in the +Inf bucket.
    pub fn quantile(&self, q: f64) -> f64 {
        let total = self.buckets.last().map_or(0.0, |b| b.1);
        if total <= 0.0 {
            return 0.0;
        }
        let rank = q * total;
        let mut lower = (0.0, 0.0);
        for &(le, cumulative) in &self.buckets {
            if cumulative >= rank {
                if le.is_infinite() {
                    return lower.0;
                }
                let within = (cumulative - lower.1).max(1e-12);
                return lower.0 + (le - lower.0) * (rank - lower.1) / within;
            }
            lower = (le, cumulative);
        }
        lower.0
    }

    pub fn figures(&self) -> StageFigures {
        StageFigures {
            observations: self.count.max(0.0) as u64,
            mean_ms: if self.count > 0.0 { self.sum / self.count * 1e3 } else { 0.0 },
            p50_ms: self.quantile(0.5) * 1e3,
            p99_ms: self.quantile(0.99) * 1e3,
        }
    }
}

/// Per stage, what happened between two scrapes.
pub fn between(before: &str, after: &str) -> BTreeMap<String, StageFigures> {
    let before = parse(before);
    parse(after).iter().map(|(stage, h)| (stage.clone(), h.since(before.get(stage)).figures())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exposition(counts: [u64; 3], sum: f64) -> String {
        format!(
            "# HELP x\n{METRIC}_bucket{{stage=\"model\",le=\"0.001\"}} {}\n{METRIC}_bucket{{stage=\"model\",le=\"0.002\"}} {}\n\
             {METRIC}_bucket{{stage=\"model\",le=\"+Inf\"}} {}\n{METRIC}_sum{{stage=\"model\"}} {sum}\n{METRIC}_count{{stage=\"model\"}} {}\n",
            counts[0], counts[1], counts[2], counts[2]
        )
    }

    #[test]
    fn the_difference_of_two_scrapes_gives_the_runs_quantiles() {
        // Before: 10 observations under 1 ms. After: 10 more, all between 1 and 2 ms.
        let before = exposition([10, 10, 10], 0.005);
        let after = exposition([10, 20, 20], 0.005 + 0.015);
        let figures = &between(&before, &after)["model"];
        assert_eq!(figures.observations, 10);
        assert!((figures.mean_ms - 1.5).abs() < 1e-9);
        assert!((figures.p50_ms - 1.5).abs() < 1e-9, "{}", figures.p50_ms);
        assert!((figures.p99_ms - 1.99).abs() < 1e-9, "{}", figures.p99_ms);
    }
}
