//! The load phase: before a run's operations, every key is made to hold one value of the
//! run's size, so the operations read what they expect and a second run over the same keys
//! changes nothing. What it found tells apart keys that were absent (after a restart over
//! keys a run already loaded: lost, deleted, or missed by a read quorum) from keys it only
//! reconciled.

use super::contexts::Contexts;
use super::keys::key_name;
use super::target::{Connection, OpError};
use super::{open_retrying, LoadConfig};
use crate::client::{Context, RequestOptions};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

/// Connection attempts of a load-phase thread (`CONNECT_RETRY` apart) before it gives up its
/// share of the keys.
const LOAD_CONNECT_ATTEMPTS: u32 = 50;

/// What the load phase did, key by key.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LoadPhaseReport {
    /// Keys written: absent, holding a value of another size, or holding siblings (which the
    /// put reconciled, since it carries the context of its read).
    pub written: u64,
    /// Of the keys written, those the read found absent (the others were reconciled or
    /// resized). After a restart, over keys a run already loaded: keys lost, deleted since,
    /// or missed by the read quorum (R < N).
    pub absent: u64,
    /// Keys left alone: they already held one value of the run's size.
    pub kept: u64,
    /// Keys whose read or write failed, by error kind; the run went on without them.
    pub errors: BTreeMap<String, u64>,
    /// How long the phase took.
    pub elapsed_secs: f64,
}

impl LoadPhaseReport {
    fn merge(&mut self, other: LoadPhaseReport) {
        self.written += other.written;
        self.absent += other.absent;
        self.kept += other.kept;
        for (kind, n) in other.errors {
            *self.errors.entry(kind).or_default() += n;
        }
    }

    /// Keys that failed.
    pub fn failed(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// Fills every key, split over the threads, so that running it again changes nothing: each key
/// is read first and left alone when it holds one value of the run's size; otherwise it is
/// written with the context of that read, which replaces every sibling instead of adding one.
/// A key that fails is counted by error kind and the phase goes on.
pub(crate) fn load_phase(
    config: &LoadConfig,
    options: RequestOptions,
    contexts: &Arc<Contexts>,
) -> Result<LoadPhaseReport, String> {
    let started = Instant::now();
    let threads = config.threads.max(1) as u64;
    let per_thread = config.keys.div_ceil(threads);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let config = config.clone();
            let contexts = Arc::clone(contexts);
            std::thread::spawn(move || {
                let keys = (t * per_thread)..((t + 1) * per_thread).min(config.keys);
                load_keys(&config, options, keys, &contexts)
            })
        })
        .collect();
    let mut report = LoadPhaseReport::default();
    for handle in handles {
        report.merge(
            handle
                .join()
                .map_err(|_| "a load thread panicked".to_string())?,
        );
    }
    report.elapsed_secs = started.elapsed().as_secs_f64();
    Ok(report)
}

/// One load-phase thread: its share of the keys over one connection.
fn load_keys(
    config: &LoadConfig,
    options: RequestOptions,
    keys: std::ops::Range<u64>,
    contexts: &Contexts,
) -> LoadPhaseReport {
    let mut report = LoadPhaseReport::default();
    // A node refusing the ring fetch from a full queue, or a moment unreachable, would
    // otherwise write off this thread's whole share of the keys: try a while first.
    let mut attempts = 0;
    let opened = open_retrying(config, options, |_| {
        attempts += 1;
        attempts <= LOAD_CONNECT_ATTEMPTS
    });
    let mut connection = match opened {
        Ok(connection) => connection,
        Err(error) => {
            report.errors.insert(
                format!("connect:{}", error.kind),
                keys.end.saturating_sub(keys.start),
            );
            return report;
        }
    };
    let value = vec![b'x'; config.value_bytes];
    for k in keys {
        let name = key_name(&config.key_prefix, k);
        match load_key(&mut connection, name.as_bytes(), &value) {
            Ok((found, context)) => {
                if let Some(context) = context {
                    contexts.remember(k, context);
                }
                match found {
                    Found::Loaded => report.kept += 1,
                    Found::Reconciled => report.written += 1,
                    Found::Absent => {
                        report.written += 1;
                        report.absent += 1;
                    }
                }
            }
            Err(e) => *report.errors.entry(e.kind().to_string()).or_default() += 1,
        }
    }
    report
}

/// What the load phase's read of a key found.
enum Found {
    /// One value of the run's size: left alone.
    Loaded,
    /// Nothing: written.
    Absent,
    /// Siblings, or a value of another size: written over (reconciled).
    Reconciled,
}

/// Makes `key` hold exactly one value of `value`'s size; returns what its read found (it
/// wrote unless `Loaded`), and the context to write the key with next (the read's when it
/// kept the value, the put's when it wrote).
fn load_key(
    connection: &mut Connection,
    key: &[u8],
    value: &[u8],
) -> Result<(Found, Option<Context>), OpError> {
    let read = connection.get(key)?;
    if read.single_value_bytes == Some(value.len()) {
        return Ok((Found::Loaded, read.context));
    }
    let found = if read.siblings == 0 {
        Found::Absent
    } else {
        Found::Reconciled
    };
    let context = connection.put(key, read.context.as_ref(), value)?;
    Ok((found, context))
}
