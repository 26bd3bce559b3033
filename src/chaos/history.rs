//! What concurrent clients did to the key-value store, as a linearizability checker
//! needs it.
//!
//! A history is a set of [`Op`]s. Each op is one client request on one key: when it was
//! sent (`invoke`), when its answer came back (`complete`) and what the answer was
//! ([`Outcome`]). The model is one register per key, initially absent: `Put` and `Delete`
//! overwrite it, `Cas` compares and sets it, `Get` reads it.
//!
//! The three outcomes mirror the server's error model, which separates "not applied"
//! from "outcome unknown":
//! - [`Outcome::Ok`]: the op took effect, at one instant between `invoke` and `complete`.
//!   A compare-and-swap that answered "mismatch" is an `Ok` op too: it read the register.
//! - [`Outcome::Fail`]: the server says it was not applied; the checker ignores the op.
//! - [`Outcome::Unknown`]: a timeout or a broken connection. The op may have taken effect
//!   at any instant after `invoke` (even after the client gave up), or never.
//!
//! Times are `u64` ticks of one monotonic clock shared by all clients (the [`Recorder`]
//! uses nanoseconds since it was created); only their order matters. Two ops whose
//! intervals merely touch (`a.complete == b.invoke`) count as concurrent.
//!
//! A history is stored as JSON lines, one op per line, so that a run can write it as it
//! goes and a failing run can be checked again offline ([`History::load`]).
//!
//! What this module does not do: it does not check anything. It only validates that each
//! op is well formed ([`History::validate`]): a result that fits its kind, and
//! `invoke <= complete`.

use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// One client request on one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    /// Which client sent it; only used to make reports readable.
    pub client: u32,
    pub key: String,
    pub kind: OpKind,
    /// When the request was sent.
    pub invoke: u64,
    /// When the answer came back; `None` when no answer came (see [`Outcome::Unknown`]).
    pub complete: Option<u64>,
    pub outcome: Outcome,
}

/// What an op asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    Put {
        value: String,
    },
    Delete,
    /// Set the register to `value` if it currently holds `expect` (`None`: is absent).
    Cas {
        expect: Option<String>,
        value: String,
    },
    Get,
}

/// What the server answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Applied; for a read or a compare-and-swap, with what it observed.
    Ok(OkResult),
    /// Definitely not applied.
    Fail,
    /// May have been applied, at any time after `invoke`, or never.
    Unknown,
}

/// The answer of an op that took effect; which variant fits depends on the [`OpKind`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OkResult {
    /// A `Put` or `Delete` was applied.
    Written,
    /// A `Get` read this value (`None`: the key was absent).
    Read(Option<String>),
    /// A `Cas` compared: `true` if it swapped, `false` if the register did not hold
    /// `expect` (a "mismatch" answer).
    Swapped(bool),
}

impl OkResult {
    /// Whether this result is an answer that an op of `kind` can give.
    fn fits(&self, kind: &OpKind) -> bool {
        matches!(
            (kind, self),
            (OpKind::Put { .. } | OpKind::Delete, OkResult::Written)
                | (OpKind::Get, OkResult::Read(_))
                | (OpKind::Cas { .. }, OkResult::Swapped(_))
        )
    }
}

impl Op {
    /// Checks that the op is well formed; `index` only labels the error.
    pub fn validate(&self, index: usize) -> Result<(), InvalidOp> {
        let problem = match (&self.outcome, self.complete) {
            (Outcome::Ok(result), _) if !result.fits(&self.kind) => {
                Some(OpProblem::ResultDoesNotFitKind)
            }
            (Outcome::Ok(_), None) => Some(OpProblem::OkWithoutCompletion),
            (_, Some(complete)) if complete < self.invoke => Some(OpProblem::CompletesBeforeInvoke),
            _ => None,
        };
        match problem {
            Some(problem) => Err(InvalidOp {
                index,
                op: Box::new(self.clone()),
                problem,
            }),
            None => Ok(()),
        }
    }
}

impl fmt::Display for Op {
    /// `client 3 cas(k, absent -> "v1") [120, 180] swapped`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "client {} ", self.client)?;
        match &self.kind {
            OpKind::Put { value } => write!(f, "put({}, {value:?})", self.key)?,
            OpKind::Delete => write!(f, "delete({})", self.key)?,
            OpKind::Cas { expect, value } => write!(
                f,
                "cas({}, {} -> {value:?})",
                self.key,
                DisplayValue(expect.as_deref())
            )?,
            OpKind::Get => write!(f, "get({})", self.key)?,
        }
        match self.complete {
            Some(complete) => write!(f, " [{}, {complete}]", self.invoke)?,
            None => write!(f, " [{}, ?]", self.invoke)?,
        }
        match &self.outcome {
            Outcome::Ok(OkResult::Written) => write!(f, " ok"),
            Outcome::Ok(OkResult::Read(value)) => {
                write!(f, " read {}", DisplayValue(value.as_deref()))
            }
            Outcome::Ok(OkResult::Swapped(true)) => write!(f, " swapped"),
            Outcome::Ok(OkResult::Swapped(false)) => write!(f, " mismatch"),
            Outcome::Fail => write!(f, " failed"),
            Outcome::Unknown => write!(f, " unknown"),
        }
    }
}

/// Shows a register value: quoted, or `absent`.
pub struct DisplayValue<'a>(pub Option<&'a str>);

impl fmt::Display for DisplayValue<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(value) => write!(f, "{value:?}"),
            None => write!(f, "absent"),
        }
    }
}

/// An op that cannot be checked because it contradicts itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidOp {
    /// Position of the op in the history.
    pub index: usize,
    /// Boxed to keep `Result<_, InvalidOp>` small.
    pub op: Box<Op>,
    pub problem: OpProblem,
}

/// Why an op is malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpProblem {
    /// E.g. a `Get` with a `Swapped` result.
    ResultDoesNotFitKind,
    /// An `Ok` op needs the time its answer arrived.
    OkWithoutCompletion,
    CompletesBeforeInvoke,
}

impl fmt::Display for InvalidOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let problem = match self.problem {
            OpProblem::ResultDoesNotFitKind => "its result does not fit its kind",
            OpProblem::OkWithoutCompletion => "it succeeded but has no completion time",
            OpProblem::CompletesBeforeInvoke => "it completes before it is invoked",
        };
        write!(f, "op #{} ({}) is invalid: {problem}", self.index, self.op)
    }
}

impl std::error::Error for InvalidOp {}

/// All ops recorded in one run, in no particular order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    pub ops: Vec<Op>,
}

impl History {
    pub fn new(ops: Vec<Op>) -> Self {
        History { ops }
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Checks every op; the first malformed one is the error.
    pub fn validate(&self) -> Result<(), InvalidOp> {
        self.ops
            .iter()
            .enumerate()
            .try_for_each(|(index, op)| op.validate(index))
    }

    /// Reads a JSON-lines file written by [`History::save`].
    pub fn load(path: &Path) -> io::Result<History> {
        History::read_from(BufReader::new(File::open(path)?))
    }

    /// Writes the history as JSON lines, one op per line.
    pub fn save(&self, path: &Path) -> io::Result<()> {
        let mut out = BufWriter::new(File::create(path)?);
        self.write_to(&mut out)?;
        out.flush()
    }

    /// Parses JSON lines; blank lines are skipped. A line that is not an op is an
    /// `InvalidData` error naming the line.
    pub fn read_from(input: impl BufRead) -> io::Result<History> {
        let mut ops = Vec::new();
        for (number, line) in input.lines().enumerate() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            let op = serde_json::from_str(&line).map_err(|err| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("history line {}: {err}", number + 1),
                )
            })?;
            ops.push(op);
        }
        Ok(History { ops })
    }

    pub fn write_to(&self, mut out: impl Write) -> io::Result<()> {
        for op in &self.ops {
            serde_json::to_writer(&mut out, op)?;
            out.write_all(b"\n")?;
        }
        Ok(())
    }
}

/// Records ops as concurrent clients run them. Cloning is cheap and every clone appends
/// to the same history.
///
/// A std `Mutex` is enough: it is held only to push one op, never across an await.
#[derive(Debug, Clone)]
pub struct Recorder {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// Time zero of every timestamp in the history.
    origin: Instant,
    ops: Mutex<Vec<Op>>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

impl Recorder {
    pub fn new() -> Self {
        Recorder {
            shared: Arc::new(Shared {
                origin: Instant::now(),
                ops: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Notes that `client` is about to send a request. Call it *before* sending, and
    /// complete the returned [`Pending`] once the answer (or its absence) is known.
    pub fn invoke(&self, client: u32, key: impl Into<String>, kind: OpKind) -> Pending {
        Pending {
            recorder: self.clone(),
            started: Some(Started {
                client,
                key: key.into(),
                kind,
                invoke: self.now(),
            }),
        }
    }

    /// A copy of the ops completed so far (ops still pending are not included).
    pub fn history(&self) -> History {
        History::new(self.lock().clone())
    }

    /// Nanoseconds since the recorder was created: the clock of every op's times, so
    /// that other events of a run (faults) can be placed on the same time line.
    pub fn now(&self) -> u64 {
        u64::try_from(self.shared.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// A panic in another client while it held the lock cannot leave the vector half
    /// written (a push either happened or not), so a poisoned lock is still usable.
    fn lock(&self) -> MutexGuard<'_, Vec<Op>> {
        self.shared
            .ops
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// An invoked op waiting for its outcome. Dropping it without calling one of its
/// methods records [`Outcome::Unknown`]: a client that bailed out cannot know whether
/// its request was applied.
#[must_use = "complete the op with ok, fail or unknown"]
#[derive(Debug)]
pub struct Pending {
    recorder: Recorder,
    /// `None` once recorded.
    started: Option<Started>,
}

#[derive(Debug)]
struct Started {
    client: u32,
    key: String,
    kind: OpKind,
    invoke: u64,
}

impl Pending {
    /// The server answered with a result.
    pub fn ok(self, result: OkResult) {
        self.complete(Outcome::Ok(result));
    }

    /// The server said the op was not applied.
    pub fn fail(self) {
        self.complete(Outcome::Fail);
    }

    /// No usable answer: a timeout, a broken connection, an "outcome unknown" error.
    pub fn unknown(self) {
        self.complete(Outcome::Unknown);
    }

    /// Records the op now, with `outcome`. An unknown outcome has no completion time.
    pub fn complete(mut self, outcome: Outcome) {
        self.record(outcome);
    }

    fn record(&mut self, outcome: Outcome) {
        let Some(started) = self.started.take() else {
            return;
        };
        let complete = match outcome {
            Outcome::Unknown => None,
            Outcome::Ok(_) | Outcome::Fail => Some(self.recorder.now()),
        };
        let op = Op {
            client: started.client,
            key: started.key,
            kind: started.kind,
            invoke: started.invoke,
            complete,
            outcome,
        };
        self.recorder.lock().push(op);
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.record(Outcome::Unknown);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(kind: OpKind, complete: Option<u64>, outcome: Outcome) -> Op {
        Op {
            client: 1,
            key: "k".to_string(),
            kind,
            invoke: 10,
            complete,
            outcome,
        }
    }

    fn put(value: &str) -> OpKind {
        OpKind::Put {
            value: value.to_string(),
        }
    }

    #[test]
    fn json_lines_round_trip_every_variant() {
        let history = History::new(vec![
            op(put("a"), Some(20), Outcome::Ok(OkResult::Written)),
            op(OpKind::Delete, Some(20), Outcome::Fail),
            op(
                OpKind::Cas {
                    expect: None,
                    value: "b".to_string(),
                },
                None,
                Outcome::Unknown,
            ),
            op(
                OpKind::Cas {
                    expect: Some("b".to_string()),
                    value: "c".to_string(),
                },
                Some(30),
                Outcome::Ok(OkResult::Swapped(false)),
            ),
            op(OpKind::Get, Some(20), Outcome::Ok(OkResult::Read(None))),
            op(
                OpKind::Get,
                Some(20),
                Outcome::Ok(OkResult::Read(Some("a".to_string()))),
            ),
        ]);
        let mut bytes = Vec::new();
        history.write_to(&mut bytes).expect("write to memory");
        let text = String::from_utf8(bytes).expect("JSON is UTF-8");
        assert_eq!(text.lines().count(), 6);
        let back = History::read_from(text.as_bytes()).expect("parse");
        assert_eq!(back, history);
    }

    #[test]
    fn save_and_load_through_a_file() {
        let path = std::env::temp_dir().join(format!("history-{}.jsonl", std::process::id()));
        let history = History::new(vec![op(put("a"), Some(20), Outcome::Ok(OkResult::Written))]);
        history.save(&path).expect("save");
        let back = History::load(&path).expect("load");
        let _ = std::fs::remove_file(&path);
        assert_eq!(back, history);
    }

    #[test]
    fn a_bad_line_is_invalid_data_naming_the_line() {
        let good = serde_json::to_string(&op(put("a"), Some(20), Outcome::Fail)).expect("json");
        let text = format!("{good}\n\n{{\"client\": 1}}\n");
        let err = History::read_from(text.as_bytes()).expect_err("line 3 is not an op");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("line 3"), "{err}");
    }

    #[test]
    fn validate_rejects_contradictory_ops() {
        let cases = [
            (
                op(OpKind::Get, Some(20), Outcome::Ok(OkResult::Swapped(true))),
                OpProblem::ResultDoesNotFitKind,
            ),
            (
                op(put("a"), Some(20), Outcome::Ok(OkResult::Read(None))),
                OpProblem::ResultDoesNotFitKind,
            ),
            (
                op(put("a"), None, Outcome::Ok(OkResult::Written)),
                OpProblem::OkWithoutCompletion,
            ),
            (
                op(put("a"), Some(5), Outcome::Fail),
                OpProblem::CompletesBeforeInvoke,
            ),
        ];
        for (bad, problem) in cases {
            let history = History::new(vec![
                op(put("x"), Some(20), Outcome::Ok(OkResult::Written)),
                bad,
            ]);
            let err = history.validate().expect_err("invalid");
            assert_eq!((err.index, err.problem), (1, problem));
        }
        let fine = History::new(vec![
            op(put("a"), None, Outcome::Unknown),
            op(OpKind::Delete, Some(10), Outcome::Ok(OkResult::Written)),
        ]);
        assert_eq!(fine.validate(), Ok(()));
    }

    #[test]
    fn recorder_records_each_outcome_with_ordered_times() {
        let recorder = Recorder::new();
        let clone = recorder.clone();
        recorder.invoke(1, "k", put("a")).ok(OkResult::Written);
        clone.invoke(2, "k", OpKind::Get).fail();
        recorder.invoke(3, "k", OpKind::Delete).unknown();
        drop(clone.invoke(4, "k", put("b")));
        let pending = recorder.invoke(5, "k", OpKind::Get);
        assert_eq!(
            recorder.history().len(),
            4,
            "pending ops are not recorded yet"
        );
        pending.ok(OkResult::Read(Some("a".to_string())));

        let history = recorder.history();
        let outcomes: Vec<_> = history
            .ops
            .iter()
            .map(|op| (op.client, op.outcome.clone(), op.complete.is_some()))
            .collect();
        assert_eq!(
            outcomes,
            vec![
                (1, Outcome::Ok(OkResult::Written), true),
                (2, Outcome::Fail, true),
                (3, Outcome::Unknown, false),
                (4, Outcome::Unknown, false),
                (5, Outcome::Ok(OkResult::Read(Some("a".to_string()))), true),
            ]
        );
        assert_eq!(history.validate(), Ok(()));
        let first = &history.ops[0];
        let last = &history.ops[4];
        assert!(first.complete.is_some_and(|c| c <= last.invoke));
    }

    #[test]
    fn recorder_is_shared_across_threads() {
        let recorder = Recorder::new();
        std::thread::scope(|scope| {
            for client in 0..4 {
                let recorder = recorder.clone();
                scope.spawn(move || {
                    for i in 0..25 {
                        recorder
                            .invoke(client, "k", put(&format!("{client}-{i}")))
                            .ok(OkResult::Written);
                    }
                });
            }
        });
        assert_eq!(recorder.history().len(), 100);
    }

    #[test]
    fn display_shows_kind_times_and_outcome() {
        let cas = op(
            OpKind::Cas {
                expect: None,
                value: "v1".to_string(),
            },
            None,
            Outcome::Unknown,
        );
        assert_eq!(
            cas.to_string(),
            "client 1 cas(k, absent -> \"v1\") [10, ?] unknown"
        );
        let get = op(
            OpKind::Get,
            Some(12),
            Outcome::Ok(OkResult::Read(Some("v".to_string()))),
        );
        assert_eq!(get.to_string(), "client 1 get(k) [10, 12] read \"v\"");
    }
}
