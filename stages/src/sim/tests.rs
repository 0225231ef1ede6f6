//! The simulator's own tests: one seed, one run; a clean cluster shows no violation.

use super::*;

/// Goal: the same seed gives the same run (equal trace digests), and another seed another.
#[test]
fn one_seed_replays_exactly() {
    let config = SimConfig::default();
    let first = run(42, &config);
    let again = run(42, &config);
    assert_eq!(first.digest, again.digest);
    assert_eq!(first.events, again.events);
    assert_ne!(first.digest, run(43, &config).digest);
}

/// Goal: without faults, a run's clients succeed and no checker fires.
#[test]
fn a_run_without_faults_has_no_violation() {
    let config = SimConfig {
        faults: Faults::NONE,
        ..SimConfig::default()
    };
    let report = run(1, &config);
    assert!(report.violations.is_empty(), "{:?}", report.violations);
    assert!(report.acked_adds > 0, "the workload did work");
}

/// Goal: fault lists parse, and an unknown fault is an error naming the known ones.
#[test]
fn fault_lists_parse() {
    assert_eq!("all".parse::<Faults>(), Ok(Faults::ALL));
    let some: Faults = "crash,drop".parse().expect("parses");
    assert!(some.crash && some.drop && !some.pause);
    let error = "crash,meteor".parse::<Faults>().expect_err("unknown");
    assert!(error.contains("partition"), "{error}");
}

/// The sweep CI runs: this many seeds, all faults, every run judged by every checker.
const SWEEP_SEEDS: u64 = 600;

/// Goal: across a fixed sweep of seeds with every fault (crashes losing unflushed writes,
/// partitions, pauses, lost connections, duplicated and reordered frames, latency spikes),
/// no checker fires: no acknowledged add is lost, nothing appears that no client wrote,
/// same-context puts both survive, reconciling puts leave one value, every request gets
/// exactly one reply, and every replica converges after heal. Method: seeds 0..SWEEP_SEEDS, split
/// over the machine's cores; a failing seed is printed with the command that replays it.
#[test]
fn sweep_of_seeds_with_every_fault_breaks_no_property() {
    let config = SimConfig::default();
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 4);
    let failures: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads as u64)
            .map(|offset| {
                let config = &config;
                scope.spawn(move || {
                    (offset..SWEEP_SEEDS)
                        .step_by(threads)
                        .map(|seed| run(seed, config))
                        .filter(|report| !report.violations.is_empty())
                        .map(|report| {
                            format!(
                                "seed {} (replay: shoal sim --seed {} --trace): {:?}",
                                report.seed, report.seed, report.violations
                            )
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a sweep thread panicked"))
            .collect()
    });
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
