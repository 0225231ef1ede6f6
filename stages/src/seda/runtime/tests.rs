//! Behaviour of the stage runtime: admission, batching and orderly stop.

use super::super::{stage_queue, SendError, StageClass, StageSpec};
use super::*;
use crossbeam_channel::{unbounded, Sender};

fn spec(capacity: usize, batch_max: usize, class: StageClass) -> StageSpec {
    StageSpec {
        name: "test",
        class,
        threads: 1,
        queue_capacity: capacity,
        batch_max,
        spin: Duration::ZERO,
        tick: Duration::from_millis(10),
    }
}

/// Reports every batch's size to the test.
struct Recorder {
    batches: Sender<usize>,
}

impl Stage for Recorder {
    type Event = u32;
    fn handle_batch(&mut self, _now: Instant, batch: &mut Vec<u32>) {
        let _ = self.batches.send(batch.len());
        batch.clear();
    }
}

/// Goal: a full queue gives the event back at once and counts the rejection (SEDA admission).
#[test]
fn full_queue_rejects_and_returns_the_event() {
    let spec = spec(2, 8, StageClass::Foreground);
    let (sender, _receiver) = stage_queue::<u32>(&spec, None);
    assert!(sender.try_send(1).is_ok());
    assert!(sender.try_send(2).is_ok());
    match sender.try_send(3) {
        Err(SendError::Full(event)) => assert_eq!(event, 3),
        other => panic!("expected Full, got {other:?}"),
    }
    let snapshot = sender.snapshot();
    assert_eq!((snapshot.enqueued, snapshot.rejected), (2, 1));
    assert_eq!((snapshot.queue_depth, snapshot.queue_high_water), (2, 2));
}

/// Goal: events queued while a worker was away are taken in one batch, bounded by batch_max;
/// stopping drains the queue first.
#[test]
fn queued_events_are_taken_in_batches_and_drained_on_stop() {
    let spec = spec(64, 16, StageClass::Foreground);
    let (sender, receiver) = stage_queue::<u32>(&spec, None);
    for i in 0..40 {
        sender.try_send(i).expect("room");
    }
    let (batches_tx, batches_rx) = unbounded();
    let handle = spawn_stage(&spec, receiver, |_| Recorder {
        batches: batches_tx.clone(),
    })
    .expect("spawn");
    handle.stop_and_join();
    let sizes: Vec<usize> = batches_rx.try_iter().collect();
    assert_eq!(sizes.iter().sum::<usize>(), 40);
    assert_eq!(
        sizes[0], 16,
        "first batch takes batch_max events: {sizes:?}"
    );
    assert!(sizes.iter().all(|s| *s <= 16));
    let snapshot = sender.snapshot();
    assert_eq!(snapshot.processed, 40);
}
