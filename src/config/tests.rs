//! Config parsing and validation: every example loads; unknown keys and bad values are named.

use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    let config: Config = toml::from_str(text).map_err(|e| ConfigError::Syntax {
        path: PathBuf::from("test.toml"),
        message: e.to_string(),
    })?;
    config.validate()?;
    Ok(config)
}

const MINIMAL: &str = r#"
[node]
id = "n1"
listen = "127.0.0.1:7401"
data_dir = "data/n1"
"#;

/// Goal: every example config in config/ loads and validates.
#[test]
fn every_example_config_is_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("config dir") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            Config::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            seen += 1;
        }
    }
    assert!(seen >= 2, "expected example configs in {}", dir.display());
}

/// Goal: a minimal config takes the documented defaults.
#[test]
fn minimal_config_takes_defaults() {
    let config = parse(MINIMAL).expect("valid");
    assert_eq!(
        (config.cluster.n, config.cluster.r, config.cluster.w),
        (1, 1, 1)
    );
    assert_eq!(config.storage.sync, SyncMode::Always);
    assert_eq!(config.stage_spec(StageId::Storage).threads, 2);
    assert_eq!(config.stage_spec(StageId::Coordinate).name, "coordinate");
    assert!(config.controller.enabled);
    assert_eq!(config.controller.target_percentile, 99.9);
    assert_eq!(config.stage_rate(StageId::Handoff), Some(1000));
}

/// Goal: an unknown key is an error that names it.
#[test]
fn unknown_key_is_named() {
    let text = format!("{MINIMAL}\n[storage]\nsink = \"always\"\n");
    let message = parse(&text).expect_err("unknown key").to_string();
    assert!(message.contains("sink"), "{message}");
}

/// Goal: large values are accepted once the write buffer carries what N coordinators' puts
/// of them merge to (the refusal is in `bad_values_are_named`).
#[test]
fn large_values_need_a_write_buffer_for_n_merged_frames() {
    let large =
        "[cluster]\nn = 3\n[limits]\nmax_value_bytes = 4000000\nmax_frame_bytes = 4200000\n";
    let enough = format!("{MINIMAL}\n{large}max_write_buffer_bytes = 25200000\n");
    assert!(parse(&enough).is_ok());
    let short = format!("{MINIMAL}\n{large}max_write_buffer_bytes = 25199998\n");
    let message = parse(&short).expect_err("too small").to_string();
    assert!(message.contains("at least 25200000"), "{message}");
}

/// Goal: a stage given more slots than its pool has workers is named (with both counts) for
/// the node to warn of; one within its pool is not.
#[test]
fn stages_with_more_slots_than_workers_are_named() {
    let text = format!(
        "{MINIMAL}\n[pool]\nbackground_workers = 2\n[stages.background_storage]\nthreads = 3\n[stages.storage]\nthreads = 2\n"
    );
    let config = parse(&text).expect("valid");
    assert_eq!(
        config.slots_beyond_workers(),
        vec![(StageId::BackgroundStorage, 3, 2)]
    );
}

/// Goal: bad values are errors that name their key.
#[test]
fn bad_values_are_named() {
    let cases = [
        ("[cluster]\nn = 3\nw = 4\n", "cluster.w"),
        ("[cluster]\npartitions = 48\n", "cluster.partitions"),
        ("[limits]\nmax_key_bytes = 70000\n", "limits.max_key_bytes"),
        ("[limits]\nmax_value_bytes = 4000000\n", "limits.max_frame_bytes"),
        // Three coordinators' 4 MB versions merge to 12 MB: more than half of 16 MiB.
        (
            "[cluster]\nn = 3\n[limits]\nmax_value_bytes = 4000000\nmax_frame_bytes = 4200000\n",
            "limits.max_write_buffer_bytes",
        ),
        ("[stages.coordinate]\nthreads = 2\n", "stages.coordinate.threads"),
        ("[stages.parse]\nqueue_capacity = 0\n", "stages.parse.queue_capacity"),
                ("[log]\nformat = \"xml\"\n", "log.format"),
        ("[cluster]\nrequest_timeout_ms = 18446744073709551615\n", "cluster.request_timeout_ms"),
        ("[storage]\nsync_interval_ms = 99999999999\n", "storage.sync_interval_ms"),
        ("[storage]\nobject_cache_mib = 100000\n", "storage.object_cache_mib"),
        ("[stages.storage]\nbatch_max = 100000000\n", "stages.storage.batch_max"),
        ("[stages.intake]\nthreads = 2\n", "stages.intake"),
        ("[stages.handoff]\nthreads = 2\n", "stages.handoff.threads"),
        // A misspelled stage is an error that names the real stages, not a fallback.
        ("[stages.storge]\nthreads = 2\n", "storage"),
        ("[limits]\nmax_siblings = 0\n", "limits.max_siblings"),
        ("[cluster]\nsecret = \"short\"\n", "cluster.secret"),
        // This node listed with another weight than node.weight says (MINIMAL's is 1).
        ("[[cluster.members]]\nid = \"n1\"\naddr = \"127.0.0.1:1\"\nweight = 2\n", "cluster.members[0].weight"),
        ("[storage]\nsync = \"sometimes\"\n", "sync"),
        ("[cluster]\ndurable_writes = \"two\"\n", "durable_writes"),
        ("[redis]\nmax_connections = 0\n", "redis.max_connections"),
        ("[security]\nclient_token = \"short\"\n", "security.client_token"),
        ("[metrics]\nlisten = \"nowhere\"\n", "listen"),
        ("[[cluster.members]]\nid = \"n2\"\naddr = \"127.0.0.1:1\"\n[[cluster.members]]\nid = \"n2\"\naddr = \"127.0.0.1:2\"\n", "cluster.members[1].id"),
        // This node listed twice, at two addresses.
        ("[[cluster.members]]\nid = \"n1\"\naddr = \"127.0.0.1:1\"\n[[cluster.members]]\nid = \"n1\"\naddr = \"127.0.0.1:2\"\n", "cluster.members[1].id"),
        // Others listed but not this node (and it does not await a join): a ring of its own.
        ("[[cluster.members]]\nid = \"n2\"\naddr = \"127.0.0.1:1\"\n", "add \"n1\" to it on every node"),
        ("[stages.storage]\nrate_per_sec = 5\n", "stages.storage.rate_per_sec"),
        ("[stages.repair]\nrate_per_sec = -1\n", "rate_per_sec"),
        ("[controller]\ntarget_percentile = 100.5\n", "controller.target_percentile"),
        ("[controller]\ntarget_ms = 0\n", "controller.target_ms"),
        ("[controller]\nperiod_ms = 1\n", "controller.period_ms"),
        ("[controller]\nwindow_periods = 0\n", "controller.window_periods"),
        ("[controller]\ndecrease_factor = 1.5\n", "controller.decrease_factor"),
        ("[controller]\nmin_rate = 0\n", "controller.min_rate"),
        ("[controller]\nstorage_nice = 20\n", "controller.storage_nice"),
        ("[controller]\nstorage_nice = -1\n", "controller.storage_nice"),
        ("[controller]\nbackground_nice = 20\n", "controller.background_nice"),
        ("[pool]\nbackground_workers = 0\n", "pool.background_workers"),
        (
            "[stages.background_storage]\nrate_per_sec = 10\n",
            "stages.background_storage.rate_per_sec",
        ),
        ("[controller]\nmin_rate = 10\nmax_rate = 5\n", "controller.min_rate"),
        ("[controller]\nmax_rate = 1000000000000\n", "controller.max_rate"),
        ("[controller]\nmax_rate = 0\n", "controller.max_rate"),
        ("[controller]\nincrease_per_period = 0\n", "controller.increase_per_period"),
        ("[controller]\nheadroom_factor = 0.9\n", "controller.headroom_factor"),
        ("[controller]\nheadroom_factor = 2.5\n", "controller.headroom_factor"),
        ("[controller]\ntarget = 5\n", "target"),
        ("[pool]\nworkers = 1000\n", "pool.workers"),
        ("[pool]\nspin_us = 1000000\n", "pool.spin_us"),
        ("[pool]\nintake_runs = [\"handoff\"]\n", "pool.intake_runs"),
        ("[pool]\nintake_runs = [\"intake\"]\n", "pool.intake_runs"),
        ("[pool]\nintake_runs = [\"commit\"]\n", "pool.intake_runs"),
        ("[controller.shares]\nstorage = 2\n", "controller.shares.storage"),
        ("[controller.shares]\nhandoff = 0\n", "controller.shares.handoff"),
        ("[controller.shares]\nhandof = 1\n", "handoff"),
    ];
    for (extra, key) in cases {
        let text = format!("{MINIMAL}\n{extra}");
        let message = parse(&text).expect_err(key).to_string();
        assert!(message.contains(key), "{key}: {message}");
    }
}

/// Goal: the intake's loop runs storage whatever `sync` or `durable_writes` say (the commit
/// stage waits for the disk, never storage) and never the commit stage, unless the config says
/// which stages it runs; `[stages.X] spin_us` from older configs still loads.
#[test]
fn intake_domain_holds_storage_but_never_the_flush_unless_configured() {
    let none = parse(&format!("{MINIMAL}\n[storage]\nsync = \"none\"\n")).expect("valid");
    assert!(none.intake_runs().contains(&StageId::Storage));
    let always = parse(MINIMAL).expect("valid");
    assert!(always.intake_runs().contains(&StageId::Storage));
    assert!(always.intake_runs().contains(&StageId::Coordinate));
    assert!(!always.intake_runs().contains(&StageId::Commit));
    let buffered = parse(&format!(
        "{MINIMAL}\n[storage]\nsync = \"none\"\n[cluster]\ndurable_writes = \"one\"\n"
    ))
    .expect("valid");
    assert_eq!(
        buffered.cluster.durable_writes,
        shoal_stages::Durability::One
    );
    assert!(buffered.intake_runs().contains(&StageId::Storage));
    let chosen = parse(&format!("{MINIMAL}\n[pool]\nintake_runs = []\n")).expect("valid");
    assert!(chosen.intake_runs().is_empty());
    let old = parse(&format!("{MINIMAL}\n[stages.parse]\nspin_us = 200\n")).expect("loads");
    assert_eq!(old.ignored_spin_keys(), vec![StageId::Parse]);
}

/// Goal: the pool spins, and the loop hands replies to the writer, by whether writes wait for
/// the disk (the commit stage then works on a worker, and the loop has time to spare), unless
/// the config says otherwise.
#[test]
fn pool_spins_only_while_writes_wait_for_the_disk_and_the_writer_only_while_none_do() {
    let none = parse(&format!("{MINIMAL}\n[storage]\nsync = \"none\"\n")).expect("valid");
    assert_eq!((none.spin_us(), none.reply_writer_from()), (0, 4));
    assert_eq!(none.pool_settings().spin, std::time::Duration::ZERO);
    let always = parse(MINIMAL).expect("valid");
    assert_eq!((always.spin_us(), always.reply_writer_from()), (200, 0));
    let periodic = parse(&format!("{MINIMAL}\n[storage]\nsync = \"periodic\"\n")).expect("valid");
    assert_eq!((periodic.spin_us(), periodic.reply_writer_from()), (200, 0));
    let buffered = parse(&format!(
        "{MINIMAL}\n[storage]\nsync = \"none\"\n[cluster]\ndurable_writes = \"one\"\n"
    ))
    .expect("valid");
    assert_eq!((buffered.spin_us(), buffered.reply_writer_from()), (200, 0));
    let chosen = parse(&format!(
        "{MINIMAL}\n[storage]\nsync = \"none\"\n[pool]\nspin_us = 50\nreply_writer_from = 0\n"
    ))
    .expect("valid");
    assert_eq!((chosen.spin_us(), chosen.reply_writer_from()), (50, 0));
    assert_eq!(
        chosen.pool_settings().spin,
        std::time::Duration::from_micros(50)
    );
}
