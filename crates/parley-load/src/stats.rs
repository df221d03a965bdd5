//! Latency summaries from raw samples (microseconds), sorted once.

use serde::Serialize;

#[derive(Debug, Clone, Serialize, Default)]
pub struct Latency {
    pub count: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

pub fn summarize(mut micros: Vec<u64>) -> Latency {
    if micros.is_empty() {
        return Latency::default();
    }
    micros.sort_unstable();
    let at = |q: f64| {
        let i = ((micros.len() as f64 * q).ceil() as usize).clamp(1, micros.len()) - 1;
        micros[i] as f64 / 1000.0
    };
    Latency {
        count: micros.len(),
        p50_ms: at(0.50),
        p99_ms: at(0.99),
        p999_ms: at(0.999),
        max_ms: micros[micros.len() - 1] as f64 / 1000.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let l = summarize((1..=1000).map(|x| x * 1000).collect());
        assert_eq!(
            (l.count, l.p50_ms, l.p99_ms, l.p999_ms, l.max_ms),
            (1000, 500.0, 990.0, 999.0, 1000.0)
        );
        assert_eq!(summarize(vec![]).count, 0);
        assert_eq!(summarize(vec![7000]).p99_ms, 7.0);
    }
}
