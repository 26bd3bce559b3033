//! Brute-force protection of Login: failed logins per user name and per client address.
//!
//! Each user name and each client address has a budget of `n` failures, refilled at `n`
//! per minute (a token bucket; `n` is `--login-failures-per-user` or
//! `--login-failures-per-address`). A login may be tried only while both budgets hold
//! at least one failure; trying reserves one from each *before* the password is checked
//! (so a thousand concurrent guesses cannot all pass the check while the first ones
//! are still hashing), and a successful login gives its reservation back. Only
//! failures cost, then: a script that logs in before every command is never slowed.
//!
//! Why not the `governor` crate: its keyed limiters answer "may this happen now" by
//! spending a cell, with no way to give it back, and here only failures may spend.
//! The bucket below is a few lines, and its clock is a parameter, so its unit tests
//! need no sleeping.
//!
//! Caveats, deliberately: the budgets are per node, not replicated (an attacker who
//! spreads guesses over `k` nodes gets `k` times the budget; a restart refills them),
//! and each table holds at most [`MAX_KEYS`] entries: full (refilled) buckets are
//! dropped first, and while the table is still full of spent buckets a new key is
//! refused (fail closed; tokens and client certificates still work).

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::LoginLimits;

/// Entries per table (user names, addresses) before spent buckets refuse new keys.
pub const MAX_KEYS: usize = 65_536;

/// Which budget refused a login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitedBy {
    User,
    Address,
}

/// A login not tried: `by`'s budget is spent until `retry_after` from now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub by: LimitedBy,
    pub retry_after: Duration,
}

impl Refused {
    /// The message a client sees: which limit, and when to retry.
    pub fn message(&self) -> String {
        let secs = self.retry_after.as_secs() + u64::from(self.retry_after.subsec_nanos() > 0);
        let whose = match self.by {
            LimitedBy::User => "for this user name",
            LimitedBy::Address => "from this address",
        };
        format!("too many failed logins {whose}: try again in {secs} s")
    }
}

/// A budget of `n` failures refilled at one per `interval` (`n` per minute), kept as
/// the time it will be full again: integer arithmetic on instants, so a retry time is
/// exact.
struct Buckets<K> {
    /// `n`; 0: no limit.
    size: u32,
    interval: Duration,
    full_at: HashMap<K, Instant>,
}

impl<K: Hash + Eq + Clone> Buckets<K> {
    fn new(per_minute: u32) -> Self {
        Buckets {
            size: per_minute,
            interval: Duration::from_secs(60) / per_minute.max(1),
            full_at: HashMap::new(),
        }
    }

    /// `Ok` if `key` may fail once more now, else how long until it may: a failure
    /// is allowed while the budget is not yet owed for more than `n - 1` intervals.
    fn check(&mut self, key: &K, now: Instant) -> Result<(), Duration> {
        if self.size == 0 {
            return Ok(());
        }
        let full_at = match self.full_at.get(key) {
            Some(t) => *t,
            None if self.full_at.len() < MAX_KEYS => return Ok(()),
            None => {
                self.full_at.retain(|_, t| *t > now);
                if self.full_at.len() < MAX_KEYS {
                    return Ok(());
                }
                // Full of spent buckets: as long as one failure takes to refill.
                return Err(self.interval);
            }
        };
        let allowed_until = now + self.interval * (self.size - 1);
        match full_at.checked_duration_since(allowed_until) {
            Some(wait) if !wait.is_zero() => Err(wait),
            _ => Ok(()),
        }
    }

    /// Spend one failure of `key`'s budget.
    fn spend(&mut self, key: &K, now: Instant) {
        if self.size == 0 {
            return;
        }
        let owed_from = self.full_at.get(key).map_or(now, |t| (*t).max(now));
        self.full_at.insert(key.clone(), owed_from + self.interval);
    }

    /// Give one failure back to `key`'s budget.
    fn refund(&mut self, key: &K, now: Instant) {
        let Some(t) = self.full_at.get_mut(key) else {
            return;
        };
        match t.checked_sub(self.interval) {
            Some(earlier) if earlier > now => *t = earlier,
            _ => {
                self.full_at.remove(key);
            }
        }
    }
}

struct Tables {
    users: Buckets<String>,
    addresses: Buckets<IpAddr>,
}

/// The failure budgets of one node.
pub struct LoginLimiter {
    /// A std mutex: held for a few hash-map operations, never across an await.
    tables: Mutex<Tables>,
}

impl LoginLimiter {
    pub fn new(limits: LoginLimits) -> Self {
        LoginLimiter {
            tables: Mutex::new(Tables {
                users: Buckets::new(limits.per_user),
                addresses: Buckets::new(limits.per_address),
            }),
        }
    }

    fn tables(&self) -> std::sync::MutexGuard<'_, Tables> {
        crate::lock(&self.tables)
    }

    /// Reserve one failure of `user`'s and of `addr`'s budgets for a login attempt, or
    /// say which is spent. Follow with [`LoginLimiter::succeeded`] if the login works.
    pub fn try_begin(&self, user: &str, addr: Option<IpAddr>, now: Instant) -> Result<(), Refused> {
        let mut t = self.tables();
        let user = user.to_string();
        t.users.check(&user, now).map_err(|retry_after| Refused {
            by: LimitedBy::User,
            retry_after,
        })?;
        if let Some(addr) = &addr {
            t.addresses
                .check(addr, now)
                .map_err(|retry_after| Refused {
                    by: LimitedBy::Address,
                    retry_after,
                })?;
            t.addresses.spend(addr, now);
        }
        t.users.spend(&user, now);
        Ok(())
    }

    /// Give back the failure reserved by [`LoginLimiter::try_begin`]: the login worked.
    pub fn succeeded(&self, user: &str, addr: Option<IpAddr>, now: Instant) {
        let mut t = self.tables();
        t.users.refund(&user.to_string(), now);
        if let Some(addr) = &addr {
            t.addresses.refund(addr, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(per_user: u32, per_address: u32) -> LoginLimiter {
        LoginLimiter::new(LoginLimits {
            per_user,
            per_address,
        })
    }

    const A: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1)));
    const B: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2)));

    #[test]
    fn failures_per_user_are_limited_and_refill() {
        let l = limiter(3, 100);
        let t0 = Instant::now();
        for _ in 0..3 {
            l.try_begin("alice", A, t0).unwrap();
        }
        // From another address too: the user's budget is spent.
        let refused = l.try_begin("alice", B, t0).unwrap_err();
        assert_eq!(refused.by, LimitedBy::User);
        // 3 per minute: one failure back every 20 s.
        assert_eq!(refused.retry_after, Duration::from_secs(20));
        assert!(
            refused.message().contains("try again in 20 s"),
            "{}",
            refused.message()
        );
        // Other users are not affected.
        l.try_begin("bob", A, t0).unwrap();
        assert!(l
            .try_begin("alice", A, t0 + Duration::from_secs(19))
            .is_err());
        l.try_begin("alice", A, t0 + Duration::from_secs(20))
            .unwrap();
        assert!(l
            .try_begin("alice", A, t0 + Duration::from_secs(20))
            .is_err());
    }

    #[test]
    fn failures_per_address_are_limited_across_user_names() {
        let l = limiter(100, 4);
        let t0 = Instant::now();
        for user in ["a", "b", "c", "d"] {
            l.try_begin(user, A, t0).unwrap();
        }
        let refused = l.try_begin("e", A, t0).unwrap_err();
        assert_eq!(refused.by, LimitedBy::Address);
        assert_eq!(refused.retry_after, Duration::from_secs(15));
        assert!(refused.message().contains("from this address"));
        l.try_begin("e", B, t0).unwrap();
        // Without an address (a test calling the service directly) only the user limit.
        l.try_begin("e", None, t0).unwrap();
    }

    #[test]
    fn successful_logins_cost_nothing() {
        let l = limiter(2, 2);
        let t0 = Instant::now();
        for _ in 0..10 {
            l.try_begin("alice", A, t0).unwrap();
            l.succeeded("alice", A, t0);
        }
        l.try_begin("alice", A, t0).unwrap();
        l.try_begin("alice", A, t0).unwrap();
        assert!(l.try_begin("alice", A, t0).is_err());
    }

    #[test]
    fn zero_turns_a_limit_off() {
        let l = limiter(0, 0);
        let t0 = Instant::now();
        for _ in 0..1000 {
            l.try_begin("alice", A, t0).unwrap();
        }
    }

    #[test]
    fn a_full_table_drops_refilled_buckets_then_refuses_new_keys() {
        let l = limiter(1, 0);
        let t0 = Instant::now();
        for i in 0..MAX_KEYS {
            l.try_begin(&format!("u{i}"), None, t0).unwrap();
        }
        // Every bucket is spent: a new name is refused rather than growing the table.
        let refused = l.try_begin("new", None, t0).unwrap_err();
        assert_eq!(refused.by, LimitedBy::User);
        // A minute later they have refilled, are dropped, and the new name is tried.
        l.try_begin("new", None, t0 + Duration::from_secs(60))
            .unwrap();
        assert_eq!(l.tables().users.full_at.len(), 1);
    }
}
