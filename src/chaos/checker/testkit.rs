//! Test support: short constructors for ops, a seeded PRNG, generators of histories that
//! are linearizable by construction, and a brute-force oracle to compare the checker
//! against.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::chaos::history::{History, OkResult, Op, OpKind, Outcome};

pub(super) fn put(client: u32, key: &str, value: &str, invoke: u64, complete: u64) -> Op {
    let kind = OpKind::Put {
        value: value.to_string(),
    };
    done(client, key, kind, invoke, complete, OkResult::Written)
}

pub(super) fn del(client: u32, key: &str, invoke: u64, complete: u64) -> Op {
    done(
        client,
        key,
        OpKind::Delete,
        invoke,
        complete,
        OkResult::Written,
    )
}

pub(super) fn get(client: u32, key: &str, seen: Option<&str>, invoke: u64, complete: u64) -> Op {
    let result = OkResult::Read(seen.map(str::to_string));
    done(client, key, OpKind::Get, invoke, complete, result)
}

pub(super) fn cas(
    client: u32,
    key: &str,
    expect: Option<&str>,
    value: &str,
    swapped: bool,
    invoke: u64,
    complete: u64,
) -> Op {
    let kind = OpKind::Cas {
        expect: expect.map(str::to_string),
        value: value.to_string(),
    };
    done(
        client,
        key,
        kind,
        invoke,
        complete,
        OkResult::Swapped(swapped),
    )
}

/// The same op with an unknown outcome (and so no completion time).
pub(super) fn unknown(op: Op) -> Op {
    Op {
        complete: None,
        outcome: Outcome::Unknown,
        ..op
    }
}

/// The same op, refused by the server.
pub(super) fn failed(op: Op) -> Op {
    Op {
        outcome: Outcome::Fail,
        ..op
    }
}

fn done(client: u32, key: &str, kind: OpKind, invoke: u64, complete: u64, result: OkResult) -> Op {
    Op {
        client,
        key: key.to_string(),
        kind,
        invoke,
        complete: Some(complete),
        outcome: Outcome::Ok(result),
    }
}

/// SplitMix64: deterministic, seeded, good enough to shuffle test histories.
pub(super) struct Rng(u64);

impl Rng {
    pub(super) fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub(super) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub(super) fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    pub(super) fn percent(&mut self, p: u64) -> bool {
        self.below(100) < p
    }

    pub(super) fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// Shape of a generated history.
#[derive(Debug, Clone, Copy)]
pub(super) struct Shape {
    pub(super) keys: usize,
    pub(super) ops: usize,
    pub(super) clients: u32,
    /// Maximum extra width of an interval on each side of its linearization point.
    pub(super) widen: u64,
    pub(super) unknown_percent: u64,
    pub(super) fail_percent: u64,
}

/// A sequential execution with linearization points 10, 20, 30, ..., turned into a
/// concurrent history by widening each op's interval around its point: linearizable by
/// construction. Every write has a distinct value.
pub(super) fn widened_sequential(rng: &mut Rng, shape: Shape) -> History {
    let keys: Vec<String> = (0..shape.keys).map(|k| format!("k{k}")).collect();
    let mut register = Registers::default();
    let mut ops = Vec::with_capacity(shape.ops);
    for index in 0..shape.ops {
        let point = 10 * (index as u64 + 1);
        let key = rng.pick(&keys).clone();
        let client = rng.below(u64::from(shape.clients)) as u32;
        let invoke = point - rng.below(shape.widen + 1).min(point);
        let complete = point + rng.below(shape.widen + 1);
        let step = Step {
            client,
            key,
            invoke,
            complete,
            value: format!("v{index}"),
        };
        ops.push(step.run(rng, shape, &mut register));
    }
    History::new(ops)
}

/// Eight (or `clients`) sequential clients, each waiting for its answer before sending
/// the next request; the register changes at a random instant inside each interval.
pub(super) fn simulated_clients(rng: &mut Rng, shape: Shape) -> History {
    let keys: Vec<String> = (0..shape.keys).map(|k| format!("k{k}")).collect();
    let per_client = shape.ops / shape.clients as usize;
    let mut planned: Vec<(u64, Step)> = Vec::with_capacity(shape.ops);
    for client in 0..shape.clients {
        let mut now = rng.below(100);
        for i in 0..per_client {
            let invoke = now;
            let point = invoke + 1 + rng.below(shape.widen);
            let complete = point + 1 + rng.below(shape.widen);
            now = complete + rng.below(50);
            let step = Step {
                client,
                key: rng.pick(&keys).clone(),
                invoke,
                complete,
                value: format!("c{client}-{i}"),
            };
            planned.push((point, step));
        }
    }
    planned.sort_by_key(|(point, step)| (*point, step.client));
    let mut register = Registers::default();
    let ops = planned
        .into_iter()
        .map(|(_, step)| step.run(rng, shape, &mut register))
        .collect();
    History::new(ops)
}

type Registers = HashMap<String, Option<String>>;

/// One op of a generated history, executed at its linearization point.
struct Step {
    client: u32,
    key: String,
    invoke: u64,
    complete: u64,
    /// The value it writes, if it writes.
    value: String,
}

impl Step {
    fn run(self, rng: &mut Rng, shape: Shape, registers: &mut Registers) -> Op {
        let current = registers.get(&self.key).cloned().flatten();
        let roll = rng.below(100);
        let kind = if roll < 35 {
            OpKind::Put {
                value: self.value.clone(),
            }
        } else if roll < 75 {
            OpKind::Get
        } else if roll < 83 {
            OpKind::Delete
        } else {
            let expect = if rng.percent(60) {
                current.clone()
            } else {
                Some(format!("other-{}", rng.below(3)))
            };
            OpKind::Cas {
                expect,
                value: self.value.clone(),
            }
        };
        let outcome = if rng.percent(shape.fail_percent) {
            Outcome::Fail
        } else if rng.percent(shape.unknown_percent) {
            if rng.percent(50) {
                apply(&kind, &self.key, registers);
            }
            Outcome::Unknown
        } else {
            Outcome::Ok(apply(&kind, &self.key, registers))
        };
        let complete = match outcome {
            Outcome::Unknown => None,
            Outcome::Ok(_) | Outcome::Fail => Some(self.complete),
        };
        Op {
            client: self.client,
            key: self.key,
            kind,
            invoke: self.invoke,
            complete,
            outcome,
        }
    }
}

/// Executes `kind` on the register of `key`; its answer.
fn apply(kind: &OpKind, key: &str, registers: &mut Registers) -> OkResult {
    let register = registers.entry(key.to_string()).or_default();
    match kind {
        OpKind::Put { value } => {
            *register = Some(value.clone());
            OkResult::Written
        }
        OpKind::Delete => {
            *register = None;
            OkResult::Written
        }
        OpKind::Get => OkResult::Read(register.clone()),
        OpKind::Cas { expect, value } => {
            let swapped = register == expect;
            if swapped {
                *register = Some(value.clone());
            }
            OkResult::Swapped(swapped)
        }
    }
}

/// Makes one successful read return a value that is certainly stale: written by an
/// acknowledged write W that completed before another acknowledged write W2 was
/// invoked, W2 having completed before the read was invoked. With distinct values this
/// is a violation for sure. Returns the index of the corrupted read, if one was found.
pub(super) fn corrupt_one_read(rng: &mut Rng, history: &mut History) -> Option<usize> {
    let reads: Vec<usize> = (0..history.ops.len())
        .filter(|&i| matches!(history.ops[i].outcome, Outcome::Ok(OkResult::Read(_))))
        .collect();
    let start = rng.below(reads.len().max(1) as u64) as usize;
    for offset in 0..reads.len() {
        let read = reads[(start + offset) % reads.len()];
        if let Some(stale) = certainly_stale_value(history, read) {
            history.ops[read].outcome = Outcome::Ok(OkResult::Read(Some(stale)));
            return Some(read);
        }
    }
    None
}

fn certainly_stale_value(history: &History, read: usize) -> Option<String> {
    let read = &history.ops[read];
    let acknowledged = |op: &&Op| {
        op.key == read.key
            && matches!(
                op.outcome,
                Outcome::Ok(OkResult::Written) | Outcome::Ok(OkResult::Swapped(true))
            )
    };
    let before = |a: &Op, t: u64| a.complete.is_some_and(|c| c < t);
    let overwriters = history
        .ops
        .iter()
        .filter(acknowledged)
        .filter(|w2| before(w2, read.invoke));
    for w2 in overwriters {
        let stale = history
            .ops
            .iter()
            .filter(acknowledged)
            .filter(|w| before(w, w2.invoke))
            .find_map(|w| match &w.kind {
                OpKind::Put { value } | OpKind::Cas { value, .. } => Some(value.clone()),
                OpKind::Delete | OpKind::Get => None,
            });
        if stale.is_some() {
            return stale;
        }
    }
    None
}

/// Random small histories: random intervals, random answers, values from a tiny
/// domain (so writes repeat values unless `unique`); mostly not linearizable.
pub(super) fn random_small(rng: &mut Rng, ops: usize, unique: bool) -> History {
    let domain = ["a", "b", "c"];
    let seen = |rng: &mut Rng| -> Option<String> {
        if rng.percent(25) {
            None
        } else {
            Some(rng.pick(&domain).to_string())
        }
    };
    let history = (0..ops).map(|i| {
        let value = if unique {
            domain.get(i).map_or(format!("u{i}"), |v| v.to_string())
        } else {
            rng.pick(&domain).to_string()
        };
        let (kind, result) = match rng.below(4) {
            0 => (OpKind::Put { value }, OkResult::Written),
            1 => (OpKind::Delete, OkResult::Written),
            2 => (OpKind::Get, OkResult::Read(seen(rng))),
            _ => (
                OpKind::Cas {
                    expect: seen(rng),
                    value,
                },
                OkResult::Swapped(rng.percent(50)),
            ),
        };
        let invoke = rng.below(20);
        let complete = invoke + rng.below(10);
        let outcome = match rng.below(10) {
            0 => Outcome::Fail,
            1 | 2 => Outcome::Unknown,
            _ => Outcome::Ok(result),
        };
        Op {
            client: i as u32,
            key: "k".to_string(),
            kind,
            invoke,
            complete: (outcome != Outcome::Unknown).then_some(complete),
            outcome,
        }
    });
    History::new(history.collect())
}

/// Linearizability straight from its definition, by trying every order: is there a
/// sequence of all acknowledged ops and some unknown ones, respecting real-time order
/// (`a.complete < b.invoke` puts a first), that the register accepts? Exponential; for
/// histories of a handful of ops.
pub(super) fn brute_force_linearizable(history: &History) -> bool {
    let mut by_key: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in &history.ops {
        let counts = match op.outcome {
            Outcome::Fail => false,
            Outcome::Unknown => op.kind != OpKind::Get,
            Outcome::Ok(_) => true,
        };
        if counts {
            by_key.entry(op.key.as_str()).or_default().push(op);
        }
    }
    by_key.values().all(|ops| {
        let mut dead_ends = HashSet::new();
        orders_exist(ops, 0, None, &mut dead_ends)
    })
}

fn orders_exist(
    ops: &[&Op],
    placed: u64,
    state: Option<String>,
    dead_ends: &mut HashSet<(u64, Option<String>)>,
) -> bool {
    let unplaced = |i: usize| placed & (1 << i) == 0;
    let required_left = (0..ops.len()).any(|i| unplaced(i) && ops[i].complete.is_some());
    if !required_left {
        return true;
    }
    if dead_ends.contains(&(placed, state.clone())) {
        return false;
    }
    for (i, op) in ops.iter().enumerate() {
        let blocked = (0..ops.len())
            .any(|j| j != i && unplaced(j) && ops[j].complete.is_some_and(|c| c < op.invoke));
        if !unplaced(i) || blocked {
            continue;
        }
        let Some(after) = step(op, &state) else {
            continue;
        };
        if orders_exist(ops, placed | (1 << i), after, dead_ends) {
            return true;
        }
    }
    dead_ends.insert((placed, state));
    false
}

/// The register after `op` in `state`, if the op can give its answer there. An
/// unknown compare-and-swap is taken as having swapped (not swapping is leaving it out).
fn step(op: &Op, state: &Option<String>) -> Option<Option<String>> {
    match (&op.kind, &op.outcome) {
        (OpKind::Put { value }, _) => Some(Some(value.clone())),
        (OpKind::Delete, _) => Some(None),
        (OpKind::Get, Outcome::Ok(OkResult::Read(seen))) => (seen == state).then(|| state.clone()),
        (OpKind::Cas { expect, .. }, Outcome::Ok(OkResult::Swapped(false))) => {
            (expect != state).then(|| state.clone())
        }
        (OpKind::Cas { expect, value }, _) => (expect == state).then(|| Some(value.clone())),
        (OpKind::Get, _) => None,
    }
}
