//! A run's result: the table for people, JSON for machines, and the side-by-side
//! comparison of nacosd and etcd runs.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::{Deserialize, Serialize};

use crate::bench::histogram::Histogram;

/// Latencies of successful operations, in milliseconds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Latency {
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Latency {
    pub fn of(h: &Histogram) -> Latency {
        let ms = |nanos: u64| nanos as f64 / 1e6;
        Latency {
            mean: ms(h.mean()),
            p50: ms(h.quantile(0.50)),
            p90: ms(h.quantile(0.90)),
            p99: ms(h.quantile(0.99)),
            p999: ms(h.quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Report {
    /// `nacosd` or `etcd`.
    pub target: String,
    pub workload: String,
    /// Read consistency level, for workloads that read.
    pub level: Option<String>,
    pub endpoints: Vec<String>,
    pub clients: usize,
    pub connections: usize,
    pub keys: u64,
    pub value_size: usize,
    /// Length of the measured phase (warm-up excluded), in seconds.
    pub elapsed_secs: f64,
    /// Successful operations in the measured phase.
    pub ok: u64,
    /// Failed operations by gRPC status code.
    pub errors: BTreeMap<String, u64>,
    /// Successful operations per second.
    pub throughput: f64,
    pub latency_ms: Latency,
    /// Leader elections during the run (warm-up included), summed over the groups:
    /// how far each group's term advanced. `None` for etcd, or when no node answered.
    /// An election during a benchmark is a fault: writes stall while it lasts.
    #[serde(default)]
    pub elections: Option<u64>,
}

impl Report {
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    fn name(&self) -> String {
        match &self.level {
            Some(level) => format!("{} ({level})", self.workload),
            None => self.workload.clone(),
        }
    }

    fn errors_text(&self) -> String {
        if self.errors.is_empty() {
            return "0".into();
        }
        self.errors
            .iter()
            .map(|(code, n)| format!("{code}={n}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

fn ms(v: f64) -> String {
    if v < 10.0 {
        format!("{v:.3}")
    } else {
        format!("{v:.1}")
    }
}

/// Reports as an aligned text table, one row each.
pub fn table(reports: &[Report]) -> String {
    let header = [
        "target",
        "workload",
        "clients",
        "conns",
        "ok",
        "ops/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
        "elections",
        "errors",
    ];
    let rows: Vec<Vec<String>> = reports
        .iter()
        .map(|r| {
            let l = &r.latency_ms;
            vec![
                r.target.clone(),
                r.name(),
                r.clients.to_string(),
                r.connections.to_string(),
                r.ok.to_string(),
                format!("{:.0}", r.throughput),
                ms(l.p50),
                ms(l.p90),
                ms(l.p99),
                ms(l.p999),
                ms(l.max),
                r.elections.map_or("-".to_string(), |e| e.to_string()),
                r.errors_text(),
            ]
        })
        .collect();
    align(&header, &rows)
}

fn align(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let text: Vec<String> = cells
            .zip(&widths)
            .enumerate()
            .map(|(i, (c, w))| {
                if i < 2 {
                    format!("{c:<w$}")
                } else {
                    format!("{c:>w$}")
                }
            })
            .collect();
        let _ = writeln!(out, "{}", text.join("  ").trim_end());
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

/// nacosd beside etcd: for every workload, level and client count run against both,
/// throughput and latency side by side with nacosd/etcd ratios. Runs without a
/// counterpart are listed alone.
pub fn compare(reports: &[Report]) -> String {
    type Key = (String, Option<String>, usize);
    let mut pairs: BTreeMap<Key, (Option<&Report>, Option<&Report>)> = BTreeMap::new();
    for r in reports {
        let slot = pairs
            .entry((r.workload.clone(), r.level.clone(), r.clients))
            .or_default();
        if r.target == "etcd" {
            slot.1 = Some(r);
        } else {
            slot.0 = Some(r);
        }
    }
    let header = [
        "workload",
        "clients",
        "nacosd ops/s",
        "etcd ops/s",
        "ratio",
        "nacosd p50",
        "etcd p50",
        "nacosd p99",
        "etcd p99",
        "p99 ratio",
        "errors n/e",
        "elections",
    ];
    let cell = |r: Option<&Report>, f: &dyn Fn(&Report) -> String| r.map(f).unwrap_or("-".into());
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
        _ => "-".into(),
    };
    let rows: Vec<Vec<String>> = pairs
        .values()
        .map(|(n, e)| {
            let any = n.or(*e).expect("a pair holds at least one report");
            vec![
                any.name(),
                any.clients.to_string(),
                cell(*n, &|r| format!("{:.0}", r.throughput)),
                cell(*e, &|r| format!("{:.0}", r.throughput)),
                ratio(n.map(|r| r.throughput), e.map(|r| r.throughput)),
                cell(*n, &|r| ms(r.latency_ms.p50)),
                cell(*e, &|r| ms(r.latency_ms.p50)),
                cell(*n, &|r| ms(r.latency_ms.p99)),
                cell(*e, &|r| ms(r.latency_ms.p99)),
                ratio(n.map(|r| r.latency_ms.p99), e.map(|r| r.latency_ms.p99)),
                format!(
                    "{}/{}",
                    cell(*n, &|r| r.error_count().to_string()),
                    cell(*e, &|r| r.error_count().to_string())
                ),
                n.and_then(|r| r.elections)
                    .map_or("-".to_string(), |x| x.to_string()),
            ]
        })
        .collect();
    let mut out = align(&header, &rows);
    out.push_str("ratio = nacosd / etcd: above 1 is better for throughput, below 1 for p99; elections: nacosd's leader elections during the run (should be 0).\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(target: &str, throughput: f64, p99: f64) -> Report {
        Report {
            target: target.into(),
            workload: "config-publish".into(),
            level: None,
            endpoints: vec!["127.0.0.1:1".into()],
            clients: 64,
            connections: 3,
            keys: 10_000,
            value_size: 256,
            elapsed_secs: 10.0,
            ok: (throughput * 10.0) as u64,
            errors: BTreeMap::new(),
            throughput,
            latency_ms: Latency {
                mean: 1.0,
                p50: 1.0,
                p90: 2.0,
                p99,
                p999: p99,
                max: p99,
            },
            elections: Some(0),
        }
    }

    #[test]
    fn compare_pairs_runs_and_computes_ratios() {
        let mut lone = report("nacosd", 100.0, 1.0);
        lone.clients = 1;
        let text = compare(&[
            report("nacosd", 3000.0, 4.0),
            report("etcd", 1000.0, 8.0),
            lone,
        ]);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("workload"), "{text}");
        let row64 = lines.iter().find(|l| l.contains(" 64 ")).expect("64 row");
        assert!(
            row64.contains("3.00x") && row64.contains("0.50x"),
            "{row64}"
        );
        let row1 = lines
            .iter()
            .find(|l| l.trim_start().starts_with("config-publish") && l.contains(" 1 "))
            .expect("1-client row");
        assert!(row1.contains(" - "), "no etcd counterpart: {row1}");
    }

    #[test]
    fn table_lists_errors_by_code() {
        let mut r = report("nacosd", 10.0, 1.0);
        r.errors.insert("UNAVAILABLE".into(), 3);
        let text = table(&[r]);
        assert!(text.contains("UNAVAILABLE=3"), "{text}");
        assert_eq!(text.lines().count(), 2);
    }
}
