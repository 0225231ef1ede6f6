//! The simulated clients: each runs one task at a time over its connection to a node, through
//! the node's real intake, parse and coordinator (frames and sealed contexts included). The
//! tasks are the workloads of TESTING.md §3: the set workload (get → union of siblings ∪ {x}
//! → put with the context), blind puts, deletes with the context of a read, and the
//! same-context scenario of SPEC §3. What they did goes to the [`History`].

use super::check::{checker, decode_set, encode_set, History};
use super::rng::SimRng;
use crate::wire::{Bytes, DeleteRequest, GetRequest, Message, PutRequest};
use std::collections::{BTreeSet, VecDeque};

/// Set keys every client adds to.
const SET_KEYS: usize = 3;
/// Keys every client blind-puts and deletes.
const BLIND_KEYS: usize = 3;
/// Attempts of a final read before it counts as failed.
const FINAL_ATTEMPTS: u32 = 8;

/// One step of the same-context scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PairStep {
    /// Read the fresh key for a context.
    Read,
    /// First put with that context.
    PutFirst,
    /// Second put with the same context.
    PutSecond,
    /// Read both back (only in half the runs; the other half keeps them for the final check).
    ReadBoth,
    /// Put with the context covering both.
    Reconcile,
}

/// What a client is doing. A step whose request was prepared from an earlier reply holds it
/// in `next`.
#[derive(Clone, Debug)]
enum Task {
    /// Set workload: read, then put the union plus `element`; then, when `then` is set, add
    /// that element too with the context the put returned (no read in between: the context
    /// a put returns must not cover anything its writer did not see).
    Add {
        key: String,
        element: u64,
        next: Option<Message>,
        then: Option<u64>,
        /// The set the last put wrote.
        written: BTreeSet<u64>,
    },
    /// A put without context.
    Blind { key: String, value: Vec<u8> },
    /// Read, then delete with the read's context.
    Delete { key: String, next: Option<Message> },
    /// The same-context scenario on a key of its own.
    Pair {
        key: String,
        step: PairStep,
        context: Option<Bytes>,
        reconcile: bool,
    },
    /// A read of every replica after heal.
    Final { key: String, attempt: u32 },
}

/// A simulated client.
pub struct Client {
    /// Its number, part of every value it writes.
    pub id: usize,
    task: Option<Task>,
    /// The request in flight: its id and when it was sent (simulated µs).
    pub outstanding: Option<(u64, u64)>,
    next_request_id: u64,
    next_value: u64,
    /// Final reads still to do.
    finals: VecDeque<String>,
    /// The replication factor, for final reads of every replica.
    n: u8,
}

impl Client {
    /// Client `id` of a cluster with replication factor `n`.
    pub fn new(id: usize, n: u8) -> Client {
        Client {
            id,
            task: None,
            outstanding: None,
            next_request_id: 1,
            next_value: 1,
            finals: VecDeque::new(),
            n,
        }
    }

    /// Whether it has nothing to do (and no final read left).
    pub fn idle(&self) -> bool {
        self.task.is_none() && self.outstanding.is_none() && self.finals.is_empty()
    }

    /// Queues final reads of `keys`.
    pub fn read_finally(&mut self, keys: impl IntoIterator<Item = String>) {
        self.finals.extend(keys);
    }

    fn unique(&mut self) -> u64 {
        let value = self.next_value;
        self.next_value += 1;
        (self.id as u64 + 1) * 1_000_000 + value
    }

    /// Starts the next task: a final read if any are queued, else (when `working`) a random
    /// workload task. Returns its first request.
    pub fn start(
        &mut self,
        working: bool,
        now_us: u64,
        rng: &mut SimRng,
        history: &mut History,
    ) -> Option<(u64, Message)> {
        if self.task.is_some() || self.outstanding.is_some() {
            return None;
        }
        let task = if let Some(key) = self.finals.pop_front() {
            Task::Final { key, attempt: 0 }
        } else if working {
            self.new_task(rng)
        } else {
            return None;
        };
        self.task = Some(task);
        self.next_request(now_us, history)
    }

    fn new_task(&mut self, rng: &mut SimRng) -> Task {
        match rng.range(0, 100) {
            0..=49 => Task::Add {
                key: format!("set-{}", rng.index(SET_KEYS)),
                element: self.unique(),
                next: None,
                then: if rng.percent(50) {
                    Some(self.unique())
                } else {
                    None
                },
                written: BTreeSet::new(),
            },
            50..=69 => Task::Blind {
                key: format!("blind-{}", rng.index(BLIND_KEYS)),
                value: format!("b:{}", self.unique()).into_bytes(),
            },
            70..=79 => Task::Delete {
                key: format!("blind-{}", rng.index(BLIND_KEYS)),
                next: None,
            },
            _ => Task::Pair {
                key: format!("pair-{}", self.unique()),
                step: PairStep::Read,
                context: None,
                reconcile: rng.percent(50),
            },
        }
    }

    /// The request for the task's current step.
    fn next_request(&mut self, now_us: u64, history: &mut History) -> Option<(u64, Message)> {
        let message = match self.task.as_ref()? {
            Task::Add {
                next: Some(message),
                ..
            }
            | Task::Delete {
                next: Some(message),
                ..
            } => message.clone(),
            Task::Add { key, .. } | Task::Delete { key, .. } => get(key, None),
            Task::Final { key, .. } => get(key, Some(self.n)),
            Task::Blind { key, value } => {
                history.write_attempted(key, value);
                put(key, None, value.clone())
            }
            Task::Pair {
                key, step, context, ..
            } => match step {
                PairStep::Read | PairStep::ReadBoth => get(key, None),
                PairStep::PutFirst | PairStep::PutSecond | PairStep::Reconcile => {
                    let (which, value) = pair_value(key, *step);
                    history.write_attempted(key, &value);
                    history.pair_put(key, which, &value, false);
                    put(key, context.clone(), value)
                }
            },
        };
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        self.outstanding = Some((request_id, now_us));
        Some((request_id, message))
    }

    /// A reply arrived for `request_id`. Returns the next request of the task, if any.
    pub fn on_reply(
        &mut self,
        request_id: u64,
        message: Message,
        now_us: u64,
        history: &mut History,
    ) -> Option<(u64, Message)> {
        match self.outstanding {
            Some((expected, _)) if expected == request_id => self.outstanding = None,
            _ => {
                history.violation(
                    checker::ONE_REPLY,
                    format!(
                        "client {} got a reply to request {request_id}, which is not outstanding",
                        self.id
                    ),
                );
                return None;
            }
        }
        let task = self.task.take()?;
        self.task = advance(task, message, history);
        self.next_request(now_us, history)
    }

    /// The connection closed, or the request was given up on: the request in flight gets no
    /// reply (its outcome is unknown) and the task ends; a final read is queued again.
    pub fn on_closed(&mut self) {
        self.outstanding = None;
        if let Some(Task::Final { key, .. }) = self.task.take() {
            self.finals.push_front(key);
        }
    }
}

/// The values of the same-context scenario: which put (0, 1: same context; 2: reconciling)
/// and its bytes.
fn pair_value(key: &str, step: PairStep) -> (u8, Vec<u8>) {
    let which = match step {
        PairStep::PutFirst => 0,
        PairStep::PutSecond => 1,
        _ => 2,
    };
    (which, format!("{key}:{which}").into_bytes())
}

fn values_of(reply: &crate::wire::GetReply) -> Vec<Vec<u8>> {
    reply.values.iter().map(|v| v.to_vec()).collect()
}

/// The next state of `task` after `reply` (`None`: the task is over).
fn advance(task: Task, reply: Message, history: &mut History) -> Option<Task> {
    match task {
        Task::Add {
            key,
            element,
            next: None,
            then,
            ..
        } => {
            let Message::GetReply(read) = reply else {
                return None;
            };
            let values = values_of(&read);
            history.check_read(&key, &values);
            let mut union: BTreeSet<u64> = values
                .iter()
                .filter_map(|v| decode_set(v))
                .flatten()
                .collect();
            union.insert(element);
            history.add_attempted(&key, element);
            let next = Some(put(&key, Some(read.context), encode_set(&union)));
            Some(Task::Add {
                key,
                element,
                next,
                then,
                written: union,
            })
        }
        Task::Add {
            key,
            element,
            then,
            mut written,
            ..
        } => {
            let done = match reply {
                Message::PutReply(done) => done,
                Message::Error(crate::error::ServiceError::ShuttingDown) => {
                    history.add_refused(&key, element);
                    return None;
                }
                _ => return None,
            };
            history.add_acked(&key, element);
            let element = then?;
            written.insert(element);
            history.add_attempted(&key, element);
            let next = Some(put(&key, Some(done.context), encode_set(&written)));
            Some(Task::Add {
                key,
                element,
                next,
                then: None,
                written,
            })
        }
        Task::Blind { key, value } => {
            if matches!(reply, Message::PutReply(_)) {
                history.blind_acked(&key, &value);
            }
            None
        }
        Task::Delete { key, next: None } => {
            let Message::GetReply(read) = reply else {
                return None;
            };
            let values = values_of(&read);
            history.check_read(&key, &values);
            if values.is_empty() {
                return None;
            }
            history.delete_attempted(&key, &values);
            let next = Some(Message::Delete(DeleteRequest {
                key: Bytes::from(key.clone().into_bytes()),
                context: read.context,
                w: None,
                timeout_ms: None,
                forwarded: false,
                durable: None,
            }));
            Some(Task::Delete { key, next })
        }
        Task::Delete { .. } => None,
        Task::Pair {
            key,
            step,
            context,
            reconcile,
        } => advance_pair(key, step, context, reconcile, reply, history),
        Task::Final { key, attempt } => {
            match reply {
                Message::GetReply(read) => {
                    history.final_read(&key, values_of(&read));
                    None
                }
                _ if attempt + 1 < FINAL_ATTEMPTS => Some(Task::Final {
                    key,
                    attempt: attempt + 1,
                }),
                other => {
                    history.violation(
                    checker::FINAL_READ,
                    format!("the final read of {key} failed {FINAL_ATTEMPTS} times, last with {other}"),
                );
                    None
                }
            }
        }
    }
}

/// The same-context scenario: read → put A → put B (both with the first read's context) →
/// in half the runs, read both back and put C with the context covering them.
fn advance_pair(
    key: String,
    step: PairStep,
    context: Option<Bytes>,
    reconcile: bool,
    reply: Message,
    history: &mut History,
) -> Option<Task> {
    let next = |step, context| {
        Some(Task::Pair {
            key: key.clone(),
            step,
            context,
            reconcile,
        })
    };
    match (step, reply) {
        (PairStep::Read, Message::GetReply(read)) => {
            history.check_read(&key, &values_of(&read));
            next(PairStep::PutFirst, Some(read.context))
        }
        (PairStep::PutFirst | PairStep::PutSecond | PairStep::Reconcile, reply) => {
            let acked = matches!(reply, Message::PutReply(_));
            let (which, value) = pair_value(&key, step);
            history.pair_put(&key, which, &value, acked);
            match step {
                PairStep::PutFirst => next(PairStep::PutSecond, context),
                PairStep::PutSecond if reconcile => next(PairStep::ReadBoth, None),
                _ => None,
            }
        }
        (PairStep::ReadBoth, Message::GetReply(read)) => {
            let values = values_of(&read);
            history.check_read(&key, &values);
            let both = [0u8, 1].iter().all(|which| {
                let step = if *which == 0 {
                    PairStep::PutFirst
                } else {
                    PairStep::PutSecond
                };
                values.contains(&pair_value(&key, step).1)
            });
            if both {
                next(PairStep::Reconcile, Some(read.context))
            } else {
                None
            }
        }
        _ => None,
    }
}

fn get(key: &str, r: Option<u8>) -> Message {
    Message::Get(GetRequest {
        key: Bytes::from(key.as_bytes().to_vec()),
        r,
        timeout_ms: None,
    })
}

fn put(key: &str, context: Option<Bytes>, value: Vec<u8>) -> Message {
    Message::Put(PutRequest {
        key: Bytes::from(key.as_bytes().to_vec()),
        context,
        value: Bytes::from(value),
        w: None,
        timeout_ms: None,
        forwarded: false,
        durable: None,
        overwrite: false,
    })
}
