//! How refused handshakes are warned of (`repeats.rs`): at the 1st, 10th, 100th...
//! refusal of each kind per peer, so a node's log names every new cause.

use super::*;
use crate::intake::handshake;
use crate::wire::{Bytes, PeerProof};
use slog::KV;
use std::sync::{Arc, Mutex};

/// A drain that keeps each WARN record as "message key=value ...", for a test to read.
#[derive(Clone, Default)]
struct Warnings(Arc<Mutex<Vec<String>>>);

impl Warnings {
    fn taken(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl slog::Drain for Warnings {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &slog::Record, _: &slog::OwnedKVList) -> Result<(), slog::Never> {
        if record.level() == slog::Level::Warning {
            let mut line = Line(record.msg().to_string());
            let _ = record.kv().serialize(record, &mut line);
            self.0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(line.0);
        }
        Ok(())
    }
}

struct Line(String);

impl slog::Serializer for Line {
    fn emit_arguments(&mut self, key: slog::Key, value: &std::fmt::Arguments) -> slog::Result {
        self.0.push_str(&format!(" {key}={value}"));
        Ok(())
    }
}

/// Goal: a repeated refusal is warned of at its 1st, 10th, 100th... occurrence, per key, and
/// a peer's counts start over once forgotten (its handshake worked again), so a node with
/// the wrong secret no longer draws a warning at every redial.
#[test]
fn repeated_refusals_are_warned_of_at_powers_of_ten() {
    let mut repeats = crate::repeats::Repeats::default();
    let warned: Vec<u64> = (0..1000)
        .filter_map(|_| repeats.note("answer n2 secret"))
        .collect();
    assert_eq!(warned, vec![1, 10, 100, 1000]);
    assert_eq!(
        repeats.note("answer n2 protocol"),
        Some(1),
        "counted per key"
    );
    assert_eq!(repeats.note("answer n3 secret"), Some(1), "counted per key");
    repeats.forget_all("answer n2 ");
    assert_eq!(repeats.note("answer n2 secret"), Some(1), "starts over");
    assert_eq!(
        repeats.note("answer n3 secret"),
        None,
        "another peer's goes on"
    );
}

/// Goal: a node that refused a peer's handshake for its Q a dozen times warns at once when the
/// same peer is next refused for another cause (its secret), naming it; a trial found the
/// second cause silent on the healthy nodes, because one count per peer had passed its 10th.
#[test]
fn a_new_cause_of_refusal_is_warned_of_at_once_after_many_of_another() {
    let now = Now::real();
    let warnings = Warnings::default();
    let logger = slog::Logger::root(warnings.clone(), slog::o!());
    let mut receiver = machine_logging("n2", SECRET, 2, membership(), logger);
    let mut out = Outbox::new();
    let n1 = NodeId::new("n1");
    let mut hello_from_n1 = |partitions: u32, out: &mut Outbox| {
        let conn = receiver.accept().expect("accepted");
        let terms = handshake::RingTerms {
            partitions,
            ..Default::default()
        };
        let hello = handshake::hello(&n1, &[7; crate::wire::NONCE_BYTES], terms);
        let frame = hello.encode(0).expect("encode");
        receiver.on_received(now, conn, &frame, out);
        (conn, written(out))
    };
    for _ in 0..12 {
        let (_, w) = hello_from_n1(16, &mut out);
        assert_eq!(w.frames.len(), 1, "refused with a reason");
    }
    let q_warnings = warnings.taken();
    assert_eq!(q_warnings.len(), 2, "the 1st and the 10th: {q_warnings:?}");
    assert!(
        q_warnings[0].contains("kind=partitions")
            && q_warnings[0].contains("n1 has a ring of 16 partitions and this node 8"),
        "{q_warnings:?}"
    );
    // n1 again, with this cluster's Q but a proof that is not the cluster secret's.
    let (conn, w) = hello_from_n1(8, &mut out);
    assert_eq!(kind_of(&w.frames[0].1), kind::PEER_CHALLENGE);
    let proof = Message::PeerProof(PeerProof {
        mac: Bytes::from(vec![0; 32]),
    });
    receiver.on_received(now, conn, &proof.encode(0).expect("encode"), &mut out);
    assert_eq!(written(&mut out).closed, vec![conn]);
    let secret_warnings = warnings.taken();
    assert_eq!(secret_warnings.len(), 1, "{secret_warnings:?}");
    assert!(
        secret_warnings[0].contains("kind=secret")
            && secret_warnings[0].contains("times=1")
            && secret_warnings[0].contains("another cluster's secret"),
        "{secret_warnings:?}"
    );
}
