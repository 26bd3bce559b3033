//! What a check found, for people (its `Display`) and for tests and the runner (its
//! fields and [`Report::verdict`]).

use std::fmt;

use crate::chaos::history::Op;

/// The result of checking a history.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Keys in the history.
    pub keys_checked: usize,
    /// Ops that took part: all but failed ops and reads with an unknown outcome, which
    /// cannot matter.
    pub ops_checked: usize,
    /// Proven violations, at most a few per key.
    pub violations: Vec<Violation>,
    /// Keys whose search ran out of budget: neither proven linearizable nor not.
    pub inconclusive: Vec<String>,
}

/// One proof that a key's sub-history is not linearizable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub key: String,
    /// The ops that show the problem, ordered by invocation: a minimal window from the
    /// zone check, or where the search got stuck (the op it could not place, the last
    /// ops it placed, and concurrent ops it had not placed).
    pub ops: Vec<Op>,
    pub explanation: String,
}

/// The overall answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    /// At least one violation was proven (some other keys may be inconclusive).
    NotLinearizable,
    /// No violation found, but some key's search ran out of budget.
    Inconclusive,
}

/// Violations printed in full by `Display`; the rest are counted.
const SHOWN_VIOLATIONS: usize = 5;

impl Report {
    pub fn verdict(&self) -> Verdict {
        if !self.violations.is_empty() {
            Verdict::NotLinearizable
        } else if !self.inconclusive.is_empty() {
            Verdict::Inconclusive
        } else {
            Verdict::Linearizable
        }
    }

    /// True only when every key was proven linearizable.
    pub fn is_linearizable(&self) -> bool {
        self.verdict() == Verdict::Linearizable
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headline = match self.verdict() {
            Verdict::Linearizable => "linearizable",
            Verdict::NotLinearizable => "NOT linearizable",
            Verdict::Inconclusive => "inconclusive",
        };
        writeln!(
            f,
            "{headline}: {} keys, {} ops checked, {} violations, {} inconclusive keys",
            self.keys_checked,
            self.ops_checked,
            self.violations.len(),
            self.inconclusive.len()
        )?;
        for violation in self.violations.iter().take(SHOWN_VIOLATIONS) {
            write!(f, "{violation}")?;
        }
        if self.violations.len() > SHOWN_VIOLATIONS {
            writeln!(
                f,
                "... and {} more violations",
                self.violations.len() - SHOWN_VIOLATIONS
            )?;
        }
        if !self.inconclusive.is_empty() {
            writeln!(
                f,
                "search budget exceeded for keys: {}",
                self.inconclusive.join(", ")
            )?;
        }
        Ok(())
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "key {}: {}", self.key, self.explanation)?;
        for op in &self.ops {
            writeln!(f, "    {op}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chaos::checker::testkit::*;

    #[test]
    fn verdict_prefers_violations_over_inconclusive() {
        let mut report = Report {
            keys_checked: 2,
            ops_checked: 3,
            ..Report::default()
        };
        assert_eq!(report.verdict(), Verdict::Linearizable);
        report.inconclusive.push("b".to_string());
        assert_eq!(report.verdict(), Verdict::Inconclusive);
        assert!(!report.is_linearizable());
        report.violations.push(Violation {
            key: "a".to_string(),
            ops: vec![get(1, "a", Some("x"), 5, 7)],
            explanation: "\"x\" was observed but never written".to_string(),
        });
        assert_eq!(report.verdict(), Verdict::NotLinearizable);
        let text = report.to_string();
        assert_eq!(
            text,
            "NOT linearizable: 2 keys, 3 ops checked, 1 violations, 1 inconclusive keys\n\
             key a: \"x\" was observed but never written\n    \
             client 1 get(a) [5, 7] read \"x\"\n\
             search budget exceeded for keys: b\n"
        );
    }
}
