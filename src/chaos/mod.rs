//! The fault-injection suite: what concurrent clients did ([`history`]) and whether it
//! was linearizable ([`checker`]).
//!
//! Both modules are plain data and algorithms: they know nothing of nacosd's APIs,
//! processes or networks, and are tested on hand-written and generated histories.

pub mod checker;
pub mod history;
