//! Behaviour of the whole checker: hand-written histories that are and are not
//! linearizable, unknown outcomes, randomized histories against a brute-force oracle,
//! and the cost of a run-sized history.
//!
//! Each verdict is asserted twice, with the zone check and with the search alone, so
//! that both paths are held to the same answers.

use std::time::Instant;

use super::testkit::*;
use super::{check, CheckOptions, Report, Verdict};
use crate::chaos::history::{History, Op, OpProblem};

fn options(zone_check: bool) -> CheckOptions {
    CheckOptions {
        zone_check,
        time_limit: None,
        ..CheckOptions::default()
    }
}

fn both_ways(ops: &[Op]) -> [Report; 2] {
    let history = History::new(ops.to_vec());
    [true, false].map(|zone_check| check(&history, &options(zone_check)).expect("valid history"))
}

fn assert_linearizable(ops: &[Op]) {
    for report in both_ways(ops) {
        assert_eq!(report.verdict(), Verdict::Linearizable, "{report}");
    }
}

/// Asserts both ways find a violation; returns the report with the zone check.
fn assert_violation(ops: &[Op]) -> Report {
    let [zoned, searched] = both_ways(ops);
    assert_eq!(zoned.verdict(), Verdict::NotLinearizable, "{zoned}");
    assert_eq!(searched.verdict(), Verdict::NotLinearizable, "{searched}");
    zoned
}

/// Whether the first violation names `op` among its ops.
fn names(report: &Report, op: &Op) -> bool {
    report
        .violations
        .first()
        .is_some_and(|v| v.ops.contains(op))
}

// --- linearizable histories ---

#[test]
fn empty_history_is_linearizable() {
    let report = check(&History::default(), &CheckOptions::default()).expect("valid");
    assert!(report.is_linearizable());
    assert_eq!((report.keys_checked, report.ops_checked), (0, 0));
}

#[test]
fn sequential_puts_gets_and_deletes() {
    assert_linearizable(&[
        get(1, "k", None, 0, 5),
        put(1, "k", "a", 10, 15),
        get(2, "k", Some("a"), 20, 25),
        put(1, "k", "b", 30, 35),
        get(2, "k", Some("b"), 40, 45),
        del(1, "k", 50, 55),
        get(2, "k", None, 60, 65),
    ]);
}

#[test]
fn reads_concurrent_with_a_write_may_see_either_value() {
    assert_linearizable(&[
        put(1, "k", "a", 0, 10),
        put(1, "k", "b", 20, 60),
        get(2, "k", Some("a"), 25, 30),
        get(3, "k", Some("b"), 30, 40),
        get(2, "k", Some("b"), 45, 50),
    ]);
}

#[test]
fn compare_and_swap_chain_and_mismatch() {
    assert_linearizable(&[
        cas(1, "k", None, "a", true, 0, 10),
        cas(2, "k", None, "x", false, 20, 30),
        cas(1, "k", Some("a"), "b", true, 40, 50),
        cas(2, "k", Some("a"), "y", false, 60, 70),
        get(3, "k", Some("b"), 80, 90),
    ]);
}

#[test]
fn concurrent_writes_where_only_one_order_works() {
    // a and b are written concurrently; a read sees b, a later read sees a, so b must
    // have been linearized first, even though a's write was invoked first.
    assert_linearizable(&[
        put(1, "k", "a", 0, 100),
        put(2, "k", "b", 5, 10),
        get(3, "k", Some("b"), 20, 30),
        get(3, "k", Some("a"), 110, 120),
    ]);
    // Three concurrent writers, one valid order (c, a, b), pinned by reads.
    assert_linearizable(&[
        put(1, "k", "a", 0, 100),
        put(2, "k", "b", 0, 100),
        put(3, "k", "c", 0, 100),
        get(4, "k", Some("c"), 10, 20),
        get(4, "k", Some("a"), 30, 40),
        get(4, "k", Some("b"), 110, 120),
    ]);
}

#[test]
fn repeated_values_are_left_to_the_search() {
    assert_linearizable(&[
        put(1, "k", "a", 0, 10),
        put(1, "k", "b", 20, 30),
        put(1, "k", "a", 40, 50),
        get(2, "k", Some("a"), 60, 70),
    ]);
    assert_violation(&[
        put(1, "k", "a", 0, 10),
        put(1, "k", "b", 20, 30),
        put(1, "k", "a", 40, 50),
        get(2, "k", Some("b"), 60, 70),
    ]);
}

#[test]
fn failed_ops_are_ignored() {
    assert_linearizable(&[
        put(1, "k", "a", 0, 10),
        failed(put(1, "k", "b", 20, 30)),
        failed(del(1, "k", 20, 30)),
        get(2, "k", Some("a"), 40, 50),
    ]);
}

// --- unknown outcomes ---

#[test]
fn unknown_write_that_later_shows_up_is_fine() {
    assert_linearizable(&[
        put(1, "k", "a", 0, 10),
        unknown(put(2, "k", "b", 20, 0)),
        get(3, "k", Some("a"), 30, 40),
        get(3, "k", Some("b"), 100, 110),
    ]);
}

#[test]
fn unknown_write_that_never_shows_up_is_fine() {
    assert_linearizable(&[
        put(1, "k", "a", 0, 10),
        unknown(put(2, "k", "b", 20, 0)),
        unknown(del(2, "k", 25, 0)),
        get(3, "k", Some("a"), 30, 40),
        get(3, "k", Some("a"), 100, 110),
    ]);
}

#[test]
fn unknown_write_may_take_effect_long_after_its_client_gave_up() {
    assert_linearizable(&[
        unknown(put(1, "k", "b", 10, 0)),
        put(2, "k", "c", 20, 30),
        get(3, "k", Some("c"), 40, 50),
        get(3, "k", Some("b"), 60, 70),
    ]);
}

#[test]
fn unknown_write_seen_before_it_was_invoked_is_a_violation() {
    let seen = get(3, "k", Some("b"), 10, 20);
    let report = assert_violation(&[
        put(1, "k", "a", 0, 5),
        seen.clone(),
        unknown(put(2, "k", "b", 30, 0)),
    ]);
    assert!(names(&report, &seen), "{report}");
}

#[test]
fn unknown_write_cannot_take_effect_twice() {
    assert_violation(&[
        unknown(put(1, "k", "b", 0, 0)),
        get(2, "k", Some("b"), 10, 20),
        put(3, "k", "c", 30, 40),
        get(2, "k", Some("b"), 50, 60),
    ]);
}

#[test]
fn unknown_compare_and_swap_may_or_may_not_have_swapped() {
    let applied = [
        put(1, "k", "a", 0, 10),
        unknown(cas(2, "k", Some("a"), "b", true, 20, 0)),
        get(3, "k", Some("b"), 30, 40),
    ];
    assert_linearizable(&applied);
    let not_applied = [
        put(1, "k", "a", 0, 10),
        unknown(cas(2, "k", Some("a"), "b", true, 20, 0)),
        get(3, "k", Some("a"), 30, 40),
    ];
    assert_linearizable(&not_applied);
    let precondition_never_held = [
        put(1, "k", "a", 0, 10),
        unknown(cas(2, "k", Some("z"), "b", true, 20, 0)),
        get(3, "k", Some("b"), 30, 40),
    ];
    assert_violation(&precondition_never_held);
}

#[test]
fn unknown_reads_are_ignored() {
    let report = both_ways(&[
        put(1, "k", "a", 0, 10),
        unknown(get(2, "k", Some("zzz"), 20, 0)),
    ]);
    for report in report {
        assert!(report.is_linearizable(), "{report}");
        assert_eq!(report.ops_checked, 1);
    }
}

// --- violations ---

#[test]
fn stale_read_after_a_completed_write() {
    let stale = get(2, "k", Some("a"), 40, 50);
    let report = assert_violation(&[
        put(1, "k", "a", 0, 10),
        put(1, "k", "b", 20, 30),
        stale.clone(),
    ]);
    assert!(names(&report, &stale), "{report}");
    assert_eq!(report.violations[0].ops.len(), 3, "{report}");
}

#[test]
fn lost_write_newer_acknowledged_write_never_seen() {
    assert_violation(&[
        put(1, "k", "a", 0, 10),
        get(2, "k", Some("a"), 15, 18),
        put(1, "k", "b", 20, 30),
        get(2, "k", Some("a"), 40, 50),
        get(3, "k", Some("a"), 60, 70),
    ]);
}

#[test]
fn two_readers_see_two_writes_in_opposite_orders() {
    let report = assert_violation(&[
        put(1, "k", "a", 0, 100),
        put(2, "k", "b", 0, 100),
        get(3, "k", Some("a"), 10, 20),
        get(3, "k", Some("b"), 30, 40),
        get(4, "k", Some("b"), 10, 20),
        get(4, "k", Some("a"), 30, 40),
    ]);
    assert!(
        report.violations[0].explanation.contains("overlap"),
        "{report}"
    );
}

#[test]
fn compare_and_swap_succeeds_on_a_value_already_replaced() {
    assert_violation(&[
        put(1, "k", "a", 0, 10),
        put(1, "k", "b", 20, 30),
        cas(2, "k", Some("a"), "c", true, 40, 50),
    ]);
}

#[test]
fn read_of_a_value_never_written() {
    let report = assert_violation(&[put(1, "k", "a", 0, 10), get(2, "k", Some("ghost"), 20, 30)]);
    assert!(
        report.violations[0].explanation.contains("\"ghost\""),
        "{report}"
    );
}

#[test]
fn read_of_a_failed_write() {
    assert_violation(&[
        failed(put(1, "k", "a", 0, 10)),
        get(2, "k", Some("a"), 20, 30),
    ]);
}

#[test]
fn delete_then_read_old_value() {
    assert_violation(&[
        put(1, "k", "a", 0, 10),
        del(1, "k", 20, 30),
        get(2, "k", Some("a"), 40, 50),
    ]);
}

#[test]
fn read_absent_after_a_completed_write() {
    assert_violation(&[put(1, "k", "a", 0, 10), get(2, "k", None, 20, 30)]);
}

#[test]
fn mismatch_while_the_register_held_the_expected_value() {
    assert_violation(&[
        put(1, "k", "a", 0, 10),
        cas(2, "k", Some("a"), "b", false, 20, 30),
    ]);
}

#[test]
fn a_violation_is_reported_on_its_own_key_only() {
    let report = assert_violation(&[
        put(1, "good", "a", 0, 10),
        get(2, "good", Some("a"), 20, 30),
        put(1, "bad", "a", 0, 10),
        get(2, "bad", None, 20, 30),
    ]);
    assert_eq!(report.keys_checked, 2);
    assert_eq!(report.ops_checked, 4);
    let keys: Vec<&str> = report.violations.iter().map(|v| v.key.as_str()).collect();
    assert_eq!(keys, ["bad"]);
}

#[test]
fn search_violation_names_the_op_it_could_not_place() {
    let history = History::new(vec![
        put(1, "k", "a", 0, 10),
        put(1, "k", "a", 20, 30),
        del(2, "k", 40, 50),
        get(3, "k", Some("a"), 60, 70),
    ]);
    let report = check(&history, &options(true)).expect("valid");
    let text = report.to_string();
    assert!(
        text.starts_with("NOT linearizable: 1 keys, 4 ops checked"),
        "{text}"
    );
    assert!(
        text.contains("client 3 get(k) [60, 70] read \"a\""),
        "{text}"
    );
    assert!(text.contains("holding absent"), "{text}");
}

// --- limits and input errors ---

#[test]
fn exhausted_budget_is_inconclusive_never_a_pass() {
    let mut ops: Vec<Op> = (0..10)
        .map(|i| put(i, "k", &format!("v{i}"), 0, 100))
        .collect();
    ops.push(get(20, "k", Some("v3"), 110, 120));
    let tight = CheckOptions {
        max_steps_per_key: 5,
        ..options(true)
    };
    let report = check(&History::new(ops.clone()), &tight).expect("valid");
    assert_eq!(report.verdict(), Verdict::Inconclusive, "{report}");
    assert_eq!(report.inconclusive, ["k"]);
    assert!(report.to_string().contains("budget exceeded"));
    let report = check(&History::new(ops), &options(true)).expect("valid");
    assert!(report.is_linearizable(), "{report}");
}

#[test]
fn malformed_ops_are_an_error_not_a_verdict() {
    let mut bad = put(1, "k", "a", 10, 20);
    bad.complete = Some(5);
    let err = check(
        &History::new(vec![put(1, "k", "b", 0, 1), bad]),
        &options(true),
    )
    .expect_err("invalid");
    assert_eq!(
        (err.index, err.problem),
        (1, OpProblem::CompletesBeforeInvoke)
    );
}

// --- randomized ---

const SEEDS: std::ops::Range<u64> = 1..13;

fn shape(seed: u64) -> Shape {
    Shape {
        keys: 1 + (seed % 3) as usize,
        ops: 120 + 20 * seed as usize,
        clients: 8,
        // Wider than the 10-tick spacing of points: several ops in flight at once.
        widen: 5 + 7 * (seed % 5),
        unknown_percent: 4 * (seed % 3),
        fail_percent: 3,
    }
}

#[test]
fn widened_sequential_histories_are_linearizable() {
    for seed in SEEDS {
        let history = widened_sequential(&mut Rng::new(seed), shape(seed));
        for zone_check in [true, false] {
            let report = check(&history, &options(zone_check)).expect("valid");
            assert!(report.is_linearizable(), "seed {seed}: {report}");
        }
    }
}

#[test]
fn corrupting_one_read_is_caught() {
    for seed in SEEDS {
        let mut rng = Rng::new(seed);
        let mut history = widened_sequential(&mut rng, shape(seed));
        let read = corrupt_one_read(&mut rng, &mut history).expect("a read to corrupt");
        let key = history.ops[read].key.clone();
        for zone_check in [true, false] {
            let report = check(&history, &options(zone_check)).expect("valid");
            assert_eq!(
                report.verdict(),
                Verdict::NotLinearizable,
                "seed {seed}: {report}"
            );
            assert!(report.violations.iter().all(|v| v.key == key), "{report}");
        }
    }
}

#[test]
fn search_agrees_with_brute_force_on_small_random_histories() {
    let mut disagreements = Vec::new();
    let (mut linearizable, mut not) = (0, 0);
    for seed in 0..600 {
        let mut rng = Rng::new(seed);
        let history = match seed % 3 {
            0 => random_small(&mut rng, 2 + (seed % 7) as usize, false),
            1 => random_small(&mut rng, 2 + (seed % 7) as usize, true),
            _ => {
                let small = Shape {
                    keys: 1,
                    ops: 3 + (seed % 6) as usize,
                    clients: 3,
                    widen: 25,
                    unknown_percent: 20,
                    fail_percent: 10,
                };
                let mut history = widened_sequential(&mut rng, small);
                if seed % 2 == 0 {
                    corrupt_one_read(&mut rng, &mut history);
                }
                history
            }
        };
        let expected = brute_force_linearizable(&history);
        if expected {
            linearizable += 1;
        } else {
            not += 1;
        }
        for zone_check in [true, false] {
            let report = check(&history, &options(zone_check)).expect("valid");
            if report.is_linearizable() != expected {
                disagreements.push((seed, zone_check, report.to_string()));
            }
        }
    }
    assert_eq!(disagreements, vec![], "checker vs brute force");
    assert!(linearizable > 100 && not > 100, "{linearizable} / {not}");
}

#[test]
fn run_sized_history_checks_quickly() {
    let shape = Shape {
        keys: 20,
        ops: 10_000,
        clients: 8,
        widen: 200,
        unknown_percent: 1,
        fail_percent: 1,
    };
    let history = simulated_clients(&mut Rng::new(7), shape);
    assert_eq!(history.len(), 10_000);
    for zone_check in [true, false] {
        let started = Instant::now();
        let report = check(&history, &options(zone_check)).expect("valid");
        let elapsed = started.elapsed();
        assert!(report.is_linearizable(), "{report}");
        println!("10,000 ops / 20 keys / 8 clients, zone check {zone_check}: {elapsed:?}");
    }
    let mut corrupted = history;
    corrupt_one_read(&mut Rng::new(8), &mut corrupted).expect("a read to corrupt");
    for zone_check in [true, false] {
        let started = Instant::now();
        let report = check(&corrupted, &options(zone_check)).expect("valid");
        let elapsed = started.elapsed();
        assert_eq!(report.verdict(), Verdict::NotLinearizable, "{report}");
        println!("same, one read corrupted, zone check {zone_check}: {elapsed:?}");
    }
}
