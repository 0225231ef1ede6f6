//! Behaviour of the worker pool: admission, batching, orderly stop, idle stages not ticked,
//! and blocking sends between stages that cannot deadlock the pool.

use super::super::{stage_queue, SendError, StageClass, StageSender, StageSpec};
use super::*;
use crossbeam_channel::{unbounded, Sender};
use std::sync::atomic::AtomicU64;

fn spec(name: &'static str, capacity: usize, batch_max: usize) -> StageSpec {
    StageSpec {
        name,
        class: StageClass::Foreground,
        threads: 1,
        queue_capacity: capacity,
        batch_max,
        tick: Duration::from_millis(10),
    }
}

fn pool(workers: usize) -> WorkerPool {
    WorkerPool::new(PoolSettings {
        workers,
        spin: Duration::from_micros(50),
        thread_name: "worker",
        nice_steps: 0,
    })
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
    let spec = spec("test", 2, 8);
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

/// Goal: events queued before the pool started are taken in batches bounded by batch_max;
/// stopping drains the queue first, and a stopped stage refuses new events as closed.
#[test]
fn queued_events_are_taken_in_batches_and_drained_on_stop() {
    let spec = spec("test", 64, 16);
    let mut pool = pool(1);
    let (sender, receiver) = stage_queue::<u32>(&spec, Some(pool.waker(&spec)));
    for i in 0..40 {
        sender.try_send(i).expect("room");
    }
    let (batches_tx, batches_rx) = unbounded();
    let handle = pool.add_stage(&spec, receiver, |_| Recorder {
        batches: batches_tx.clone(),
    });
    pool.start().expect("start");
    handle.stop_and_join();
    let sizes: Vec<usize> = batches_rx.try_iter().collect();
    assert_eq!(sizes.iter().sum::<usize>(), 40);
    assert_eq!(
        sizes[0], 16,
        "first batch takes batch_max events: {sizes:?}"
    );
    assert!(sizes.iter().all(|s| *s <= 16));
    assert_eq!(sender.snapshot().processed, 40);
    assert!(matches!(sender.try_send(99), Err(SendError::Closed(99))));
    pool.stop_and_join();
}

/// Whether stopping `handle` returns within 10 s (a hang fails the test instead of hanging it).
fn stops_in_time(handle: StageHandle) -> bool {
    let (done_tx, done_rx) = unbounded();
    std::thread::spawn(move || {
        handle.stop_and_join();
        let _ = done_tx.send(());
    });
    done_rx.recv_timeout(Duration::from_secs(10)).is_ok()
}

/// Goal: a stage stopped after its pool's workers have returned (as after a start that failed
/// part-way, which stops the workers it had started) serves what its queue holds and stops
/// on the stopping thread rather than waiting for workers that will never come.
#[test]
fn a_stage_whose_pool_has_no_workers_left_stops_without_them() {
    let spec = spec("test", 64, 16);
    let mut pool = pool(1);
    let (sender, receiver) = stage_queue::<u32>(&spec, Some(pool.waker(&spec)));
    let (batches_tx, batches_rx) = unbounded();
    let handle = pool.add_stage(&spec, receiver, |_| Recorder {
        batches: batches_tx.clone(),
    });
    pool.start().expect("start");
    pool.stop_and_join();
    for i in 0..3 {
        sender.try_send(i).expect("the stage still takes events");
    }
    assert!(stops_in_time(handle), "the stage stopped without workers");
    let served: usize = batches_rx.try_iter().sum();
    assert_eq!(
        served, 3,
        "what its queue held was served before it stopped"
    );
}

/// Panics on its first batch (a machine bug).
struct Panics;

impl Stage for Panics {
    type Event = u32;
    fn handle_batch(&mut self, _now: Instant, _batch: &mut Vec<u32>) {
        panic!("a machine bug (this panic is the test's)");
    }
}

/// Goal: a worker that died in a panic counts as gone, so a stage of its pool stops on the
/// stopping thread instead of waiting for a worker that will never come back, stopped
/// before its pool as a node stops them (stages first) and after it.
#[test]
fn a_worker_that_panicked_counts_as_exited_when_its_stage_stops() {
    for stage_first in [true, false] {
        stage_of_a_panicked_worker_stops(stage_first);
    }
}

fn stage_of_a_panicked_worker_stops(stage_first: bool) {
    let spec = spec("test", 64, 16);
    let mut pool = pool(1);
    let (sender, receiver) = stage_queue::<u32>(&spec, Some(pool.waker(&spec)));
    let handle = pool.add_stage(&spec, receiver, |_| Panics);
    pool.start().expect("start");
    sender.try_send(1).expect("room");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !pool.threads.iter().all(|t| t.is_finished()) {
        assert!(
            Instant::now() < deadline,
            "the worker did not die on the event"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut pool = Some(pool);
    if !stage_first {
        if let Some(pool) = pool.take() {
            pool.stop_and_join();
        }
    }
    assert!(
        stops_in_time(handle),
        "stage_first {stage_first}: the stage never stopped"
    );
    assert!(
        matches!(sender.try_send(2), Err(SendError::Closed(2))),
        "stage_first {stage_first}: the stage is stopped, not only left"
    );
    if let Some(pool) = pool {
        pool.stop_and_join();
    }
}

/// Counts its ticks; idle while `idle` says so.
struct Ticker {
    ticks: Arc<AtomicU64>,
    idle: bool,
}

impl Stage for Ticker {
    type Event = u32;
    fn handle_batch(&mut self, _now: Instant, batch: &mut Vec<u32>) {
        batch.clear();
    }
    fn on_tick(&mut self, _now: Instant) {
        self.ticks.fetch_add(1, Ordering::Relaxed);
    }
    fn idle(&self) -> bool {
        self.idle
    }
}

/// Goal: a stage that says it is idle is not ticked (an idle node wakes no thread for it),
/// while a busy one is ticked every period.
#[test]
fn idle_stages_are_not_ticked_and_busy_ones_are() {
    let mut pool = pool(2);
    let mut handles = Vec::new();
    let mut counters = Vec::new();
    for (name, idle) in [("idle", true), ("busy", false)] {
        let spec = spec(name, 8, 8);
        let (_sender, receiver) = stage_queue::<u32>(&spec, Some(pool.waker(&spec)));
        let ticks = Arc::new(AtomicU64::new(0));
        counters.push(Arc::clone(&ticks));
        handles.push(pool.add_stage(&spec, receiver, move |_| Ticker {
            ticks: Arc::clone(&ticks),
            idle,
        }));
    }
    pool.start().expect("start");
    std::thread::sleep(Duration::from_millis(200));
    for handle in handles {
        handle.stop_and_join();
    }
    pool.stop_and_join();
    let idle = counters[0].load(Ordering::Relaxed);
    let busy = counters[1].load(Ordering::Relaxed);
    assert_eq!(idle, 0, "an idle stage was ticked {idle} times");
    assert!(
        (5..=30).contains(&busy),
        "a 10 ms tick ran {busy} times in 200 ms"
    );
}

/// Forwards each event to the next stage with a blocking send (a reply edge).
struct Forward {
    next: StageSender<u32>,
}

impl Stage for Forward {
    type Event = u32;
    fn handle_batch(&mut self, _now: Instant, batch: &mut Vec<u32>) {
        for event in batch.drain(..) {
            self.next.send(event).expect("the next stage runs");
        }
    }
}

/// Counts what reached the end of the chain.
struct Sink {
    seen: Sender<u32>,
}

impl Stage for Sink {
    type Event = u32;
    fn handle_batch(&mut self, _now: Instant, batch: &mut Vec<u32>) {
        for event in batch.drain(..) {
            let _ = self.seen.send(event);
        }
    }
}

/// Up to `count` events from `seen`, waiting at most 10 s for them all.
fn receive(seen: &crossbeam_channel::Receiver<u32>, count: usize) -> Vec<u32> {
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while out.len() < count && Instant::now() < deadline {
        if let Ok(event) = seen.recv_timeout(Duration::from_millis(100)) {
            out.push(event);
        }
    }
    out
}

/// Goal: with a single worker, a stage that sends with waiting (a reply edge) to a full queue
/// does not deadlock the pool: the worker runs the full stage itself. A thread-per-stage
/// runtime never had this hazard; a shared pool would without it.
#[test]
fn blocking_send_to_a_full_queue_runs_the_full_stage_on_a_single_worker() {
    let mut pool = pool(1);
    let sink_spec = spec("sink", 2, 1);
    let (sink_tx, sink_rx) = stage_queue::<u32>(&sink_spec, Some(pool.waker(&sink_spec)));
    let source_spec = spec("source", 256, 256);
    let (source_tx, source_rx) = stage_queue::<u32>(&source_spec, Some(pool.waker(&source_spec)));
    let (seen_tx, seen_rx) = unbounded();
    // The source is served first, so its one batch fills the sink's queue of two at once.
    let source = pool.add_stage(&source_spec, source_rx, |_| Forward {
        next: sink_tx.clone(),
    });
    let sink = pool.add_stage(&sink_spec, sink_rx, |_| Sink {
        seen: seen_tx.clone(),
    });
    for i in 0..200 {
        source_tx.try_send(i).expect("room");
    }
    pool.start().expect("start");
    let seen = receive(&seen_rx, 200);
    assert_eq!(
        seen.len(),
        200,
        "the pool stalled after {} events",
        seen.len()
    );
    assert_eq!(
        seen,
        (0..200).collect::<Vec<_>>(),
        "order kept along the chain"
    );
    source.stop_and_join();
    sink.stop_and_join();
    pool.stop_and_join();
}

/// Goal: a node's two pools (foreground and background, [`WorkerPool::beside`]) cannot
/// deadlock each other through blocking sends: a chain background → foreground →
/// background of queues of two, one worker each, delivers everything in order. Without help
/// across the family, the background worker waits on the full foreground queue while the
/// foreground worker waits on the full background one.
#[test]
fn blocking_sends_between_two_pools_of_one_family_do_not_deadlock() {
    let mut foreground = pool(1);
    let mut background = foreground.beside(PoolSettings {
        workers: 1,
        spin: Duration::ZERO,
        thread_name: "background",
        nice_steps: 0,
    });
    let tail_spec = spec("tail", 2, 1);
    let (tail_tx, tail_rx) = stage_queue::<u32>(&tail_spec, Some(background.waker(&tail_spec)));
    let middle_spec = spec("middle", 2, 1);
    let (middle_tx, middle_rx) =
        stage_queue::<u32>(&middle_spec, Some(foreground.waker(&middle_spec)));
    let source_spec = spec("source", 256, 256);
    let (source_tx, source_rx) =
        stage_queue::<u32>(&source_spec, Some(background.waker(&source_spec)));
    let (seen_tx, seen_rx) = unbounded();
    let source = background.add_stage(&source_spec, source_rx, |_| Forward {
        next: middle_tx.clone(),
    });
    let tail = background.add_stage(&tail_spec, tail_rx, |_| Sink {
        seen: seen_tx.clone(),
    });
    let middle = foreground.add_stage(&middle_spec, middle_rx, |_| Forward {
        next: tail_tx.clone(),
    });
    for i in 0..200 {
        source_tx.try_send(i).expect("room");
    }
    foreground.start().expect("start");
    background.start().expect("start");
    let seen = receive(&seen_rx, 200);
    assert_eq!(
        seen,
        (0..200).collect::<Vec<_>>(),
        "the pools stalled or reordered"
    );
    source.stop_and_join();
    middle.stop_and_join();
    tail.stop_and_join();
    foreground.stop_and_join();
    background.stop_and_join();
}

/// Goal: a pool started with `nice_steps` has every worker at that many steps of nice below
/// the process (capped at 19), and only its workers: the starting thread keeps its own.
#[cfg(target_os = "linux")]
#[test]
fn a_pool_with_nice_steps_runs_its_workers_below_the_process_priority() {
    use crate::storage::cpu_priority::{thread_nice, threads_named};
    let own = rustix::process::getpriority_process(None).expect("own nice");
    let mut background = WorkerPool::new(PoolSettings {
        workers: 2,
        spin: Duration::ZERO,
        thread_name: "nicetest",
        nice_steps: 4,
    });
    background.start().expect("start");
    assert_eq!(background.nice_failures(), 0);
    let workers: Vec<u32> = (0..2)
        .flat_map(|i| threads_named(&format!("nicetest-{i}")).expect("threads"))
        .collect();
    assert_eq!(workers.len(), 2, "both workers found by name");
    for tid in workers {
        assert_eq!(thread_nice(tid).expect("nice"), (own + 4).min(19));
    }
    assert_eq!(
        rustix::process::getpriority_process(None).expect("own nice"),
        own
    );
    background.stop_and_join();
}

/// Idle until an event arrives; its tick then records when it ran and makes it idle again.
struct Deadline {
    ticked: Sender<Instant>,
    busy: bool,
}

impl Stage for Deadline {
    type Event = u32;
    fn handle_batch(&mut self, _now: Instant, batch: &mut Vec<u32>) {
        batch.clear();
        self.busy = true;
    }
    fn on_tick(&mut self, now: Instant) {
        self.busy = false;
        let _ = self.ticked.send(now);
    }
    fn idle(&self) -> bool {
        !self.busy
    }
}

/// Goal: a stage that leaves idle is ticked within its period even when the rest of the pool
/// sleeps for a second (the timekeeper is woken; the coordinator's deadlines depend on it).
#[test]
fn a_stage_leaving_idle_is_ticked_within_its_period_in_a_sleeping_pool() {
    let mut pool = pool(2);
    let mut slow = spec("slow", 8, 8);
    slow.tick = Duration::from_secs(1);
    let (_slow_tx, slow_rx) = stage_queue::<u32>(&slow, Some(pool.waker(&slow)));
    let slow_handle = pool.add_stage(&slow, slow_rx, |_| Ticker {
        ticks: Arc::new(AtomicU64::new(0)),
        idle: false,
    });
    let fast = spec("fast", 8, 8); // a 10 ms tick
    let (fast_tx, fast_rx) = stage_queue::<u32>(&fast, Some(pool.waker(&fast)));
    let (ticked_tx, ticked_rx) = unbounded();
    let fast_handle = pool.add_stage(&fast, fast_rx, |_| Deadline {
        ticked: ticked_tx.clone(),
        busy: false,
    });
    pool.start().expect("start");
    std::thread::sleep(Duration::from_millis(100)); // every worker parks
    let sent = Instant::now();
    fast_tx.try_send(1).expect("room");
    let ticked = ticked_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the stage was ticked");
    let late = ticked.saturating_duration_since(sent);
    assert!(
        late < Duration::from_millis(200),
        "ticked {late:?} after leaving idle"
    );
    fast_handle.stop_and_join();
    slow_handle.stop_and_join();
    pool.stop_and_join();
}
