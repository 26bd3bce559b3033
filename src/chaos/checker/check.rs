//! The entry point: validate, split by key, run the zone check then the search on each
//! key, and turn what they found into a [`Report`].

use std::time::{Duration, Instant};

use super::model::{partition, KeyHistory, StateId};
use super::report::{Report, Violation};
use super::search::{search, Budget, SearchResult, Stuck};
use super::zones::{find_violations, ZoneViolation};
use crate::chaos::history::{DisplayValue, History, InvalidOp};

/// Limits and switches of a check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckOptions {
    /// Search steps (ops tried or undone) allowed per key before it is inconclusive.
    pub max_steps_per_key: u64,
    /// Wall-clock limit for the whole check; keys not finished by then are
    /// inconclusive. `None`: no limit.
    pub time_limit: Option<Duration>,
    /// Run the zone check before the search on keys whose writes have distinct values.
    /// Off only to test the search on its own.
    pub zone_check: bool,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            max_steps_per_key: 10_000_000,
            time_limit: Some(Duration::from_secs(60)),
            zone_check: true,
        }
    }
}

/// Zone-check violations reported per key; one fault tends to break many rules at once.
const ZONE_VIOLATIONS_PER_KEY: usize = 5;

/// Checks `history` for linearizability, key by key. A malformed op is an error, not a
/// verdict: the history, not the store, is wrong.
pub fn check(history: &History, options: &CheckOptions) -> Result<Report, InvalidOp> {
    history.validate()?;
    let deadline = options.time_limit.map(|limit| Instant::now() + limit);
    let keys = partition(history);
    let mut report = Report {
        keys_checked: keys.len(),
        ops_checked: keys.iter().map(|key| key.considered).sum(),
        ..Report::default()
    };
    for key in &keys {
        let budget = Budget {
            max_steps: options.max_steps_per_key,
            deadline,
        };
        match check_key(key, options.zone_check, budget) {
            KeyVerdict::Linearizable => {}
            KeyVerdict::Violations(found) => report
                .violations
                .extend(found.into_iter().map(|v| v.into_violation(key, history))),
            KeyVerdict::Inconclusive => report.inconclusive.push(key.key.clone()),
        }
    }
    Ok(report)
}

enum KeyVerdict {
    Linearizable,
    Violations(Vec<Finding>),
    Inconclusive,
}

/// A violation in terms of the key's ops, before it is turned into history ops.
struct Finding {
    ops: Vec<usize>,
    explanation: String,
}

fn check_key(key: &KeyHistory, zone_check: bool, budget: Budget) -> KeyVerdict {
    if zone_check && key.unique_writes {
        let found = find_violations(key, ZONE_VIOLATIONS_PER_KEY);
        if !found.is_empty() {
            // Each zone violation is a proof on its own; no need to search.
            return KeyVerdict::Violations(found.into_iter().map(Finding::from).collect());
        }
    }
    match search(&key.ops, budget) {
        SearchResult::Linearizable => KeyVerdict::Linearizable,
        SearchResult::Violation(stuck) => KeyVerdict::Violations(vec![stuck_finding(key, &stuck)]),
        SearchResult::OutOfBudget => KeyVerdict::Inconclusive,
    }
}

impl From<ZoneViolation> for Finding {
    fn from(violation: ZoneViolation) -> Self {
        Finding {
            ops: violation.ops,
            explanation: violation.explanation,
        }
    }
}

fn stuck_finding(key: &KeyHistory, stuck: &Stuck) -> Finding {
    let completed = key.ops[stuck.op].complete.unwrap_or(u64::MAX);
    let explanation = format!(
        "no order of the ops fits the register: in the deepest attempt, after {} ops left \
         it holding {}, an op that completed at {completed} could not take effect",
        stuck.placed,
        show(key, stuck.state),
    );
    let mut ops = stuck.recent.clone();
    ops.push(stuck.op);
    ops.extend(&stuck.pending);
    Finding { ops, explanation }
}

impl Finding {
    fn into_violation(self, key: &KeyHistory, history: &History) -> Violation {
        let mut sources: Vec<usize> = self.ops.iter().map(|&op| key.ops[op].source).collect();
        sources.sort_unstable();
        sources.dedup();
        let mut ops: Vec<_> = sources.iter().map(|&s| history.ops[s].clone()).collect();
        ops.sort_by_key(|op| (op.invoke, op.complete));
        Violation {
            key: key.key.clone(),
            ops,
            explanation: self.explanation,
        }
    }
}

fn show(key: &KeyHistory, state: StateId) -> String {
    DisplayValue(key.value(state)).to_string()
}
