//! The tables a run prints: operations by outcome per group, error codes, faults by
//! kind with the longest stretch without a successful write after each, and the
//! verdicts.
//!
//! The write gap of one fault, per group: the longest interval between consecutive
//! successful writes (a put, a delete, a swap that swapped) completing within the
//! fault's window, which runs from the fault's injection to the next fault's (or to the
//! end of the workload for the last one), with the window's two ends counting as
//! points. So it covers the fault itself, its healing and the recovery after it. All
//! times are on the history's clock.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::checker::{Report, Verdict};
use super::history::{History, OkResult, OpKind, Outcome};
use super::nemesis::FaultKind;
use super::ops::Group;
use super::workload::CodeCounts;

/// One fault as it happened, on the history's clock (nanoseconds).
#[derive(Debug, Clone)]
pub struct FaultRecord {
    pub kind: FaultKind,
    pub description: String,
    pub start: u64,
    pub healed: u64,
    /// Something healing had to do besides the undo (a restart after a full disk).
    pub note: Option<String>,
}

/// ok / failed / unknown.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcomes {
    pub ok: u64,
    pub fail: u64,
    pub unknown: u64,
}

/// Counts per group and class (`read`, `write`, `cas`); a naming read counts once per
/// instance slot it read.
pub fn outcomes(history: &History) -> BTreeMap<(Group, &'static str), Outcomes> {
    let mut table: BTreeMap<(Group, &'static str), Outcomes> = BTreeMap::new();
    for op in &history.ops {
        let Some(group) = Group::of_key(&op.key) else {
            continue;
        };
        let class = match op.kind {
            OpKind::Get => "read",
            OpKind::Put { .. } | OpKind::Delete => "write",
            OpKind::Cas { .. } => "cas",
        };
        let row = table.entry((group, class)).or_default();
        match op.outcome {
            Outcome::Ok(_) => row.ok += 1,
            Outcome::Fail => row.fail += 1,
            Outcome::Unknown => row.unknown += 1,
        }
    }
    table
}

/// Completion times of successful writes per group, sorted.
fn write_times(history: &History) -> BTreeMap<Group, Vec<u64>> {
    let mut times: BTreeMap<Group, Vec<u64>> = BTreeMap::new();
    for op in &history.ops {
        let wrote = matches!(
            op.outcome,
            Outcome::Ok(OkResult::Written) | Outcome::Ok(OkResult::Swapped(true))
        );
        if let (true, Some(group), Some(complete)) = (wrote, Group::of_key(&op.key), op.complete) {
            times.entry(group).or_default().push(complete);
        }
    }
    for list in times.values_mut() {
        list.sort_unstable();
    }
    times
}

/// The longest stretch without a completed write in `[from, to]`, in nanoseconds.
pub fn longest_gap(times: &[u64], from: u64, to: u64) -> u64 {
    let start = times.partition_point(|&t| t < from);
    let mut last = from;
    let mut longest = 0;
    for &t in times[start..].iter().take_while(|&&t| t <= to) {
        longest = longest.max(t - last);
        last = t;
    }
    longest.max(to.saturating_sub(last))
}

/// Per fault (in order): the gap per group, in nanoseconds.
pub fn fault_gaps(
    history: &History,
    faults: &[FaultRecord],
    workload_end: u64,
) -> Vec<BTreeMap<Group, u64>> {
    let times = write_times(history);
    faults
        .iter()
        .enumerate()
        .map(|(i, fault)| {
            let end = faults.get(i + 1).map_or(workload_end, |next| next.start);
            Group::ALL
                .into_iter()
                .map(|g| {
                    let list = times.get(&g).map(Vec::as_slice).unwrap_or(&[]);
                    (g, longest_gap(list, fault.start, end.max(fault.start)))
                })
                .collect()
        })
        .collect()
}

fn ms(nanos: u64) -> String {
    format!("{}", nanos / 1_000_000)
}

/// Everything a run found, for the tables.
pub struct Findings<'a> {
    pub history: &'a History,
    pub faults: &'a [FaultRecord],
    pub workload_end: u64,
    pub codes: &'a CodeCounts,
    pub report: &'a Report,
    /// One line per problem other than a linearizability violation: divergences,
    /// crashes, nodes that did not recover, inconclusive keys.
    pub problems: &'a [String],
    pub violations_file: Option<String>,
}

/// The tables as text.
pub fn render(f: &Findings<'_>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Operations by outcome (history ops; a naming read counts once per instance)"
    );
    let _ = writeln!(
        out,
        "  {:<8} {:<6} {:>9} {:>9} {:>9}",
        "group", "op", "ok", "failed", "unknown"
    );
    for ((group, class), o) in outcomes(f.history) {
        let _ = writeln!(
            out,
            "  {:<8} {:<6} {:>9} {:>9} {:>9}",
            group.name(),
            class,
            o.ok,
            o.fail,
            o.unknown
        );
    }
    let _ = writeln!(out, "\nErrors by status code (client calls)");
    if f.codes.values().all(BTreeMap::is_empty) {
        let _ = writeln!(out, "  none");
    }
    for (group, codes) in f.codes {
        let list: Vec<String> = codes.iter().map(|(c, n)| format!("{c} {n}")).collect();
        let _ = writeln!(out, "  {:<8} {}", group.name(), list.join(", "));
    }

    let gaps = fault_gaps(f.history, f.faults, f.workload_end);
    let mut by_kind: BTreeMap<FaultKind, Vec<&BTreeMap<Group, u64>>> = BTreeMap::new();
    for (fault, gap) in f.faults.iter().zip(&gaps) {
        by_kind.entry(fault.kind).or_default().push(gap);
    }
    let _ = writeln!(
        out,
        "\nFaults by kind, with the longest stretch without a successful write after each (ms; max over the faults of that kind)"
    );
    let _ = writeln!(
        out,
        "  {:<15} {:>5} {:>9} {:>9} {:>9} {:>14}",
        "fault", "count", "config", "naming", "db", "median (all)"
    );
    for (kind, list) in &by_kind {
        let max = |g: Group| list.iter().map(|m| m[&g]).max().unwrap_or(0);
        let mut worst: Vec<u64> = list
            .iter()
            .map(|m| m.values().copied().max().unwrap_or(0))
            .collect();
        worst.sort_unstable();
        let median = worst.get(worst.len() / 2).copied().unwrap_or(0);
        let _ = writeln!(
            out,
            "  {:<15} {:>5} {:>9} {:>9} {:>9} {:>14}",
            kind.name(),
            list.len(),
            ms(max(Group::Config)),
            ms(max(Group::Naming)),
            ms(max(Group::Db)),
            ms(median)
        );
    }
    let _ = writeln!(out, "  total faults: {}", f.faults.len());

    let r = f.report;
    let verdict = match r.verdict() {
        Verdict::Linearizable => "linearizable",
        Verdict::NotLinearizable => "NOT linearizable",
        Verdict::Inconclusive => "inconclusive",
    };
    let _ = writeln!(
        out,
        "\nLinearizability: {verdict} ({} keys, {} ops checked)",
        r.keys_checked, r.ops_checked
    );
    let mut keys: Vec<&str> = r.violations.iter().map(|v| v.key.as_str()).collect();
    keys.dedup();
    let _ = writeln!(
        out,
        "  violations: {} on {} key(s){}",
        r.violations.len(),
        keys.len(),
        if keys.is_empty() {
            String::new()
        } else {
            format!(
                ": {}{}",
                keys.iter().take(8).copied().collect::<Vec<_>>().join(", "),
                if keys.len() > 8 { ", ..." } else { "" }
            )
        }
    );
    let _ = writeln!(
        out,
        "Other problems (divergence, crashes, no recovery): {}",
        f.problems.len()
    );
    for p in f.problems.iter().take(20) {
        let _ = writeln!(out, "  - {p}");
    }
    if f.problems.len() > 20 {
        let _ = writeln!(out, "  ... and {} more", f.problems.len() - 20);
    }
    if let Some(file) = &f.violations_file {
        let _ = writeln!(out, "  details: {file}");
    }
    out
}

/// The fault timeline, one line per fault, times in seconds since the history began.
pub fn timeline(faults: &[FaultRecord]) -> String {
    let mut out = String::new();
    for (i, fault) in faults.iter().enumerate() {
        let _ = write!(
            out,
            "#{:<3} {:>8.3}s - {:>8.3}s  {:<15} {}",
            i + 1,
            fault.start as f64 / 1e9,
            fault.healed as f64 / 1e9,
            fault.kind.name(),
            fault.description
        );
        if let Some(note) = &fault.note {
            let _ = write!(out, " ({note})");
        }
        out.push('\n');
    }
    out
}

/// The faults whose window (injection to healing, plus `margin` after) meets
/// `[from, to]`, as `#n kind` labels.
fn faults_around(faults: &[FaultRecord], from: u64, to: u64, margin: u64) -> Vec<String> {
    faults
        .iter()
        .enumerate()
        .filter(|(_, f)| f.start <= to && f.healed.saturating_add(margin) >= from)
        .map(|(i, f)| format!("#{} {} ({})", i + 1, f.kind.name(), f.description))
        .collect()
}

/// `violations.txt`: every violation with its ops and the faults around them, the
/// other problems, and the fault timeline.
pub fn violations_report(
    seed: u64,
    run_id: &str,
    report: &Report,
    problems: &[String],
    faults: &[FaultRecord],
) -> String {
    let mut out = format!(
        "seed {seed}, run {run_id}; times are nanoseconds on the history's clock \
         (faults.log and the timeline below give seconds)\n\n"
    );
    let _ = writeln!(
        out,
        "== linearizability violations: {} ==",
        report.violations.len()
    );
    for v in &report.violations {
        let from = v.ops.iter().map(|op| op.invoke).min().unwrap_or(0);
        let to = v
            .ops
            .iter()
            .map(|op| op.complete.unwrap_or(op.invoke))
            .max()
            .unwrap_or(0);
        let _ = write!(out, "\n{v}");
        let around = faults_around(faults, from, to, 10_000_000_000);
        let _ = writeln!(
            out,
            "  faults during or up to 10 s before: {}",
            if around.is_empty() {
                "none".to_string()
            } else {
                around.join("; ")
            }
        );
    }
    if !report.inconclusive.is_empty() {
        let _ = writeln!(
            out,
            "\ninconclusive keys: {}",
            report.inconclusive.join(", ")
        );
    }
    let _ = writeln!(out, "\n== other problems: {} ==", problems.len());
    for p in problems {
        let _ = writeln!(out, "- {p}");
    }
    let _ = writeln!(out, "\n== faults ==\n{}", timeline(faults));
    out
}

/// The first `lines` lines of `text`, and how many more there are: what of a report
/// goes into the console, where a CI log keeps it after the run's files are gone.
pub fn head(text: &str, lines: usize) -> String {
    let total = text.lines().count();
    let mut out: String = text.lines().take(lines).flat_map(|l| [l, "\n"]).collect();
    if total > lines {
        let _ = writeln!(out, "... {} more lines", total - lines);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_head_of_a_report_says_how_much_it_left_out() {
        let text = "a\nb\nc\n";
        assert_eq!(head(text, 5), "a\nb\nc\n");
        assert_eq!(head(text, 3), "a\nb\nc\n");
        assert_eq!(head(text, 2), "a\nb\n... 1 more lines\n");
        assert_eq!(head("", 2), "");
    }

    #[test]
    fn the_gap_counts_the_window_ends() {
        let s = 1_000_000_000;
        let times = [s, 2 * s, 6 * s, 7 * s];
        assert_eq!(longest_gap(&times, 0, 8 * s), 4 * s);
        // Nothing in the window at all: the whole window.
        assert_eq!(longest_gap(&times, 3 * s, 5 * s), 2 * s);
        // The tail after the last write counts.
        assert_eq!(longest_gap(&times, 6 * s, 12 * s), 5 * s);
    }
}
