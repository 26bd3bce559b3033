//! Requests to a peer, coalesced into calls: the queueing that forwarded writes and
//! followers' read indexes share.
//!
//! Every key (a leader's address and a group, say) has a queue and a task. The task
//! takes what has queued up, up to a count and a size, whenever one of its
//! `in_flight` call slots is free, and hands it to the caller's `send` in a task of its
//! own. Under light load a request leaves at once, alone; under heavy load requests
//! pile up while the calls in flight are out, and the next call takes them all. No
//! request ever waits for a timer.
//!
//! Every request in a call was queued before the call was made. That is the property
//! the read-index path relies on: one read index asked for after a read arrived serves
//! that read, however many others share it.
//!
//! A queue's task ends after `idle` without requests (a leader that stopped leading);
//! the next request for that key starts a new one.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::time::Instant;

use super::client::PeerClient;
use crate::error::{Error, Result};

/// One request waiting in a queue.
pub(crate) trait Queued: Send + 'static {
    /// What it adds to a call's size (bytes), for [`Limits::bytes`].
    fn size(&self) -> usize;
}

/// A request whose caller waits for a `Result<R>` on `reply` until `deadline`; what the
/// call carries for it is `payload`.
pub(crate) struct Waiting<P, R> {
    pub payload: P,
    pub deadline: Instant,
    pub reply: oneshot::Sender<Result<R>>,
}

impl<P, R> Waiting<P, R> {
    /// A request with `payload` that may wait `timeout` from now, and where its answer
    /// arrives.
    pub(crate) fn new(payload: P, timeout: Duration) -> (Self, oneshot::Receiver<Result<R>>) {
        let (reply, answer) = oneshot::channel();
        let deadline = Instant::now() + timeout;
        let waiting = Waiting {
            payload,
            deadline,
            reply,
        };
        (waiting, answer)
    }
}

/// The requests of `batch` still worth a call at `now`, and the longest any of them may
/// still wait (`None`: none left). A request whose caller stopped waiting is dropped;
/// one past its deadline (it waited for a call slot) is answered with `expired()`.
pub(crate) fn still_waiting<P, R>(
    batch: Vec<Waiting<P, R>>,
    now: Instant,
    expired: impl Fn() -> Error,
) -> Option<(Vec<Waiting<P, R>>, Duration)> {
    let mut live = Vec::with_capacity(batch.len());
    for w in batch {
        if w.reply.is_closed() {
            continue;
        }
        if w.deadline <= now {
            let _ = w.reply.send(Err(expired()));
            continue;
        }
        live.push(w);
    }
    let longest = live.iter().map(|w| w.deadline - now).max()?;
    Some((live, longest))
}

/// Calls made and the requests they carried.
#[derive(Default)]
pub(crate) struct CallCounts {
    calls: AtomicU64,
    requests: AtomicU64,
}

impl CallCounts {
    /// One call carrying `requests`.
    pub(crate) fn record(&self, requests: usize) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(requests as u64, Ordering::Relaxed);
    }

    /// `(calls, requests)` so far.
    pub(crate) fn get(&self) -> (u64, u64) {
        (
            self.calls.load(Ordering::Relaxed),
            self.requests.load(Ordering::Relaxed),
        )
    }
}

/// How calls are formed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Most requests in one call.
    pub items: usize,
    /// A call stops taking requests once their sizes reach this.
    pub bytes: usize,
    /// Calls outstanding per key.
    pub in_flight: usize,
    /// A queue's task stops after this long without requests.
    pub idle: Duration,
    /// Requests waiting per key before callers wait to enqueue.
    pub queue: usize,
}

/// The queues of one kind of request, by key.
pub(crate) struct Coalescer<P> {
    limits: Limits,
    queues: Mutex<HashMap<String, mpsc::Sender<P>>>,
}

impl<P: Queued> Coalescer<P> {
    pub(crate) fn new(limits: Limits) -> Self {
        Coalescer {
            limits,
            queues: Mutex::default(),
        }
    }

    /// Queue `request` under `key`. `send` makes one call of a batch and answers every
    /// request in it; it is used by the queue's task if this request starts one. Gives
    /// the request back if no queue takes it.
    pub(crate) async fn submit<S, F>(&self, key: &str, request: P, send: S) -> Result<(), P>
    where
        S: Fn(Vec<P>) -> F + Send + Sync + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        let send = Arc::new(send);
        let mut request = request;
        // A queue whose task just stopped for idleness refuses the request: start another.
        for _ in 0..2 {
            let queue = self.queue(key, &send);
            match queue.send(request).await {
                Ok(()) => return Ok(()),
                Err(mpsc::error::SendError(p)) => request = p,
            }
        }
        Err(request)
    }

    /// The open queue for `key`, started if there is none.
    fn queue<S, F>(&self, key: &str, send: &Arc<S>) -> mpsc::Sender<P>
    where
        S: Fn(Vec<P>) -> F + Send + Sync + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        let mut queues = crate::lock(&self.queues);
        if let Some(q) = queues.get(key).filter(|q| !q.is_closed()) {
            return q.clone();
        }
        let (tx, rx) = mpsc::channel(self.limits.queue);
        tokio::spawn(run(self.limits, rx, send.clone()));
        queues.insert(key.to_string(), tx.clone());
        tx
    }
}

impl PeerClient {
    /// Queue `request` in `queues` for the leader at `addr` and `group` (`variant`
    /// separates queues further, e.g. by read policy); `call(client, addr, group,
    /// batch)` makes one call of a batch and answers its requests. `Unavailable` when
    /// no queue takes the request (nothing was sent).
    pub(crate) async fn enqueue<P, C, F>(
        &self,
        queues: &Coalescer<P>,
        addr: &str,
        group: &str,
        variant: &str,
        request: P,
        call: C,
    ) -> Result<()>
    where
        P: Queued,
        C: Fn(PeerClient, String, String, Vec<P>) -> F + Send + Sync + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        let (client, to, g) = (self.clone(), addr.to_string(), group.to_string());
        let one_call = move |batch| call(client.clone(), to.clone(), g.clone(), batch);
        let key = format!("{addr} {group} {variant}");
        queues.submit(&key, request, one_call).await.map_err(|_| {
            Error::unavailable(format!(
                "no queue for calls to leader {addr} (group {group})"
            ))
        })
    }
}

/// The task of one queue: take what is waiting (up to the limits) whenever a call slot
/// is free, and send it.
async fn run<P, S, F>(limits: Limits, mut rx: mpsc::Receiver<P>, send: Arc<S>)
where
    P: Queued,
    S: Fn(Vec<P>) -> F + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(limits.in_flight));
    loop {
        let first = match tokio::time::timeout(limits.idle, rx.recv()).await {
            Ok(Some(p)) => p,
            Ok(None) => return,
            Err(_) => {
                // Refuse new requests (their senders start a new queue), then send what
                // slipped in before the close.
                rx.close();
                let rest: Vec<P> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
                if !rest.is_empty() {
                    if let Ok(_slot) = slots.clone().acquire_owned().await {
                        send(rest).await;
                    }
                }
                return;
            }
        };
        // While every slot is busy, requests pile up behind `first`: the next call
        // takes them all.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut bytes = first.size();
        let mut batch = vec![first];
        while batch.len() < limits.items && bytes < limits.bytes {
            match rx.try_recv() {
                Ok(p) => {
                    bytes += p.size();
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        let call = send(batch);
        tokio::spawn(async move {
            call.await;
            drop(slot);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Req {
        id: u32,
        reply: oneshot::Sender<usize>,
    }

    impl Queued for Req {
        fn size(&self) -> usize {
            1
        }
    }

    fn limits(in_flight: usize, items: usize) -> Limits {
        Limits {
            items,
            bytes: usize::MAX,
            in_flight,
            idle: Duration::from_secs(60),
            queue: 1024,
        }
    }

    /// While the one call slot is taken, requests pile up and go out together, each
    /// answered; no call is larger than the item limit.
    #[tokio::test]
    async fn requests_queued_behind_a_busy_call_share_the_next_one() {
        let coalescer = Arc::new(Coalescer::new(limits(1, 3)));
        let (gate_tx, gate_rx) = tokio::sync::watch::channel(false);
        let (calls_tx, mut calls) = mpsc::unbounded_channel::<Vec<u32>>();
        let send = move |batch: Vec<Req>| {
            let mut gate = gate_rx.clone();
            let calls_tx = calls_tx.clone();
            async move {
                let _ = calls_tx.send(batch.iter().map(|r| r.id).collect());
                let _ = gate.wait_for(|open| *open).await;
                let n = batch.len();
                for r in batch {
                    let _ = r.reply.send(n);
                }
            }
        };
        let send = Arc::new(send);
        let mut answers = Vec::new();
        for id in 0..5 {
            let (reply, answer) = oneshot::channel();
            let s = send.clone();
            let submitted = coalescer
                .submit("k", Req { id, reply }, move |b| s(b))
                .await;
            assert!(submitted.is_ok());
            answers.push(answer);
            if id == 0 {
                // The first request leaves alone and holds the only slot.
                assert_eq!(calls.recv().await, Some(vec![0]));
            }
        }
        gate_tx.send_replace(true);
        assert_eq!(calls.recv().await, Some(vec![1, 2, 3]), "capped at 3");
        assert_eq!(calls.recv().await, Some(vec![4]));
        let mut sizes = Vec::new();
        for a in answers {
            sizes.push(a.await.expect("answered"));
        }
        assert_eq!(sizes, vec![1, 3, 3, 3, 1]);
    }

    #[tokio::test]
    async fn still_waiting_drops_the_abandoned_and_answers_the_expired() {
        let now = Instant::now();
        let (gone, gone_answer) = Waiting::<u32, ()>::new(1, Duration::from_secs(5));
        drop(gone_answer);
        let (mut late, mut late_answer) = Waiting::<u32, ()>::new(2, Duration::from_secs(5));
        late.deadline = now;
        let (mut short, _short_answer) = Waiting::<u32, ()>::new(3, Duration::ZERO);
        short.deadline = now + Duration::from_secs(1);
        let (mut long, _long_answer) = Waiting::<u32, ()>::new(4, Duration::ZERO);
        long.deadline = now + Duration::from_secs(3);

        let (live, longest) = still_waiting(vec![gone, late, short, long], now, || {
            Error::unavailable("too late")
        })
        .expect("two still wait");
        assert_eq!(live.iter().map(|w| w.payload).collect::<Vec<_>>(), [3, 4]);
        assert_eq!(longest, Duration::from_secs(3));
        let err = late_answer.try_recv().unwrap().unwrap_err();
        assert!(err.to_string().contains("too late"), "{err}");

        let (late, _answer) = Waiting::<u32, ()>::new(5, Duration::ZERO);
        assert!(still_waiting(vec![late], Instant::now(), || Error::unavailable("x")).is_none());
    }

    #[test]
    fn call_counts_add_up() {
        let counts = CallCounts::default();
        counts.record(3);
        counts.record(1);
        assert_eq!(counts.get(), (2, 4));
    }
}
