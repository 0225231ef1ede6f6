//! The command line contract other tools and tests rely on (issue 2 §6).

use super::support::TestNode;
use std::process::Command;

fn shoal(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(args)
        .output()
        .expect("run shoal");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Goal: put prints a context; get --json prints every sibling and the context; a put with
/// that context reconciles; delete with a context hides the key.
#[test]
fn put_get_delete_round_trip_through_the_cli() {
    let node = TestNode::start("");
    let addr = node.addr.as_str();
    let (ok, context, _) = shoal(&["put", "--node", addr, "k", "one"]);
    assert!(ok && !context.trim().is_empty());
    shoal(&["put", "--node", addr, "k", "two"]);
    let (ok, json, _) = shoal(&["get", "--node", addr, "k", "--json"]);
    assert!(ok);
    let parsed: serde_json::Value = serde_json::from_str(&json).expect("json");
    let mut values: Vec<&str> = parsed["values"]
        .as_array()
        .expect("values")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    values.sort();
    assert_eq!(values, vec!["one", "two"]);
    let context = parsed["context"].as_str().expect("context").to_string();
    let (ok, _, _) = shoal(&["put", "--node", addr, "k", "merged", "--context", &context]);
    assert!(ok);
    let (_, json, _) = shoal(&["get", "--node", addr, "k", "--json"]);
    let parsed: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(parsed["values"], serde_json::json!(["merged"]));
    let context = parsed["context"].as_str().expect("context").to_string();
    let (ok, _, _) = shoal(&["delete", "--node", addr, "k", "--context", &context]);
    assert!(ok);
    let (_, json, _) = shoal(&["get", "--node", addr, "k", "--json"]);
    let parsed: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(parsed["values"], serde_json::json!([]));
}

/// Goal: admin stats --json has one row per stage with the documented fields.
#[test]
fn admin_stats_json_lists_every_stage_with_the_documented_fields() {
    let node = TestNode::start("");
    let (ok, json, stderr) = shoal(&["admin", "stats", "--node", &node.addr, "--json"]);
    assert!(ok, "{stderr}");
    let parsed: serde_json::Value = serde_json::from_str(&json).expect("json");
    let stages = parsed["stages"].as_array().expect("stages");
    let names: Vec<&str> = stages.iter().filter_map(|s| s["name"].as_str()).collect();
    assert_eq!(
        names,
        vec![
            "intake",
            "parse",
            "coordinate",
            "replicate",
            "repair",
            "handoff",
            "anti_entropy",
            "transfer",
            "gossip",
            "background_storage",
            "storage",
            "commit"
        ]
    );
    for field in [
        "name",
        "class",
        "threads",
        "queue_depth",
        "queue_capacity",
        "queue_high_water",
        "enqueued",
        "processed",
        "rejected",
        "wait_us_p50",
        "wait_us_p99",
        "service_us_p50",
        "service_us_p99",
    ] {
        assert!(
            stages.iter().all(|s| !s[field].is_null()),
            "field {field} missing"
        );
    }
}

/// Goal: an unreachable node and a bad context are clear errors with a non-zero exit.
#[test]
fn unreachable_node_and_bad_context_are_clear_errors() {
    let (ok, _, stderr) = shoal(&["get", "--node", "127.0.0.1:1", "k", "--timeout-secs", "2"]);
    assert!(!ok && stderr.contains("error:"), "{stderr}");
    let node = TestNode::start("");
    let (ok, _, stderr) = shoal(&["put", "--node", &node.addr, "k", "v", "--context", "!!!"]);
    assert!(!ok && stderr.contains("context"), "{stderr}");
}

/// Goal: a config with an unknown key stops the node with an error that names the key.
#[test]
fn node_with_unknown_config_key_exits_naming_the_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let text = super::support::config_text(dir.path(), "[cluster]\nreplicas = 3\n");
    let path = super::support::write_config(dir.path(), &text);
    let (ok, _, stderr) = shoal(&["node", "--config", path.to_str().expect("utf-8 path")]);
    assert!(!ok && stderr.contains("replicas"), "{stderr}");
}

/// Goal: `shoal demo` (README's main job), shortened, completes: a 3-node cluster under load
/// with a node stopped and restarted, no acknowledged write lost, every stage of every node
/// printed, its plot written where it says, everything stopped cleanly.
#[test]
fn demo_completes_with_no_lost_write_and_prints_every_stage() {
    let dir = tempfile::tempdir().expect("temp dir");
    let plot = dir.path().join("demo.svg");
    let plot_arg = plot.to_str().expect("a UTF-8 temp path");
    let (ok, stdout, stderr) = shoal(&[
        "demo",
        "--duration-secs",
        "4",
        "--threads",
        "2",
        "--plot",
        plot_arg,
    ]);
    assert!(ok, "demo failed: {stderr}\n{stdout}");
    assert!(
        stdout.contains(plot_arg),
        "the demo says where its plot is: {stdout}"
    );
    let svg = std::fs::read_to_string(&plot).expect("the demo wrote its plot");
    assert!(svg.contains("throughput per second") && svg.contains("latency per second"));
    assert!(
        stdout.contains("lost acknowledged writes: 0 of "),
        "{stdout}"
    );
    for stage in [
        "intake",
        "parse",
        "coordinate",
        "replicate",
        "repair",
        "handoff",
        "storage",
    ] {
        let rows = stdout
            .lines()
            .filter(|l| {
                l.starts_with(stage) && l.contains("foreground")
                    || l.starts_with(stage) && l.contains("background")
            })
            .count();
        assert_eq!(
            rows, 3,
            "stage {stage} printed for each of the 3 nodes:\n{stdout}"
        );
    }
    assert!(
        stdout.contains("n3 stopped") && stdout.contains("n3 back"),
        "{stdout}"
    );
    assert!(stdout.contains("all nodes stopped cleanly"), "{stdout}");
}

/// Goal: `shoal sim` runs a sweep and ends with `seeds N violations V` (exit 0 when V is 0);
/// `--seed S --trace` prints the run's events and ends with `trace <digest>`, the same digest
/// every time for one seed on one build; an unknown fault is a clear error. Reference: SPEC
/// §8, TESTING.md §2.
#[test]
fn sim_sweeps_seeds_and_replays_one_with_the_same_digest() {
    let (ok, out, err) = shoal(&["sim", "--seeds", "3", "--first-seed", "10", "--jobs", "1"]);
    assert!(ok, "{out}{err}");
    assert_eq!(out.lines().last(), Some("seeds 3 violations 0"), "{out}");

    let trace = |seed: &str| {
        let (ok, out, err) = shoal(&["sim", "--seed", seed, "--trace"]);
        assert!(ok, "{err}");
        let last = out.lines().last().unwrap_or_default().to_string();
        assert!(
            last.starts_with("trace ") && last.len() == "trace ".len() + 32,
            "{last}"
        );
        assert!(
            out.lines().count() > 100,
            "the trace lists the run's events"
        );
        last
    };
    let first = trace("5");
    assert_eq!(first, trace("5"), "one seed, one run");
    assert_ne!(first, trace("6"));

    let (ok, _, err) = shoal(&["sim", "--faults", "crash,meteor"]);
    assert!(!ok);
    assert!(err.contains("meteor") && err.contains("partition"), "{err}");
}

/// Goal: a command whose reader stops early (`shoal sim --trace | head -1`, `shoal admin
/// throttle | head -1`) stops quietly, as other Unix tools do, instead of
/// panicking with a backtrace or printing "error: Broken pipe".
#[test]
fn a_command_whose_reader_goes_away_stops_without_a_panic() {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(["sim", "--seed", "1", "--trace"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run shoal");
    let stdout = child.stdout.take().expect("stdout");
    let mut first = String::new();
    BufReader::new(stdout)
        .read_line(&mut first)
        .expect("a line");
    assert!(first.contains("start"), "{first}"); // the reader is dropped here
    let output = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(output.status.code(), Some(141), "{stderr}");

    // A command that writes through `writeln!` gets the closed pipe as an error: the same
    // quiet stop, not "error: Broken pipe".
    // The reader is gone before the command prints (it first asks the node), so its first
    // write fails whatever the timing.
    let node = TestNode::start("");
    let mut child = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(["admin", "throttle", "--node", &node.addr])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run shoal");
    drop(child.stdout.take());
    let output = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.is_empty(), "{stderr}");
    assert_eq!(output.status.code(), Some(141), "{stderr}");
}

/// Goal: `admin stats --watch --json` writes JSON Lines: one object per line, each with the
/// wall-clock `at_ms` it was taken, no blank line between (a trial's line-by-line parse broke).
#[test]
fn admin_stats_watch_json_writes_one_timed_object_per_line() {
    use std::io::{BufRead, BufReader};
    let node = TestNode::start("");
    let mut child = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(["admin", "stats", "--node", &node.addr, "--json", "--watch"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run shoal");
    let stdout = child.stdout.take().expect("stdout");
    let lines: Vec<String> = BufReader::new(stdout)
        .lines()
        .take(2)
        .map(|line| line.expect("a line"))
        .collect();
    let _ = child.kill();
    let _ = child.wait();
    let at: Vec<u64> = lines
        .iter()
        .map(|line| {
            let parsed: serde_json::Value = serde_json::from_str(line).expect("one object a line");
            assert!(parsed["stages"].is_array(), "{line}");
            parsed["at_ms"].as_u64().expect("at_ms")
        })
        .collect();
    assert!(at[1] > at[0], "{at:?}");
}

/// Runs `shoal admin WATCH_ARGS --node NODE` (a watch printing JSON Lines) across a restart of
/// its node and asserts it goes on: a line taken after the restart, and what it said on
/// stderr meanwhile.
fn assert_watch_outlives_a_restart(watch_args: &[&str]) {
    use std::io::{BufRead, BufReader};
    let mut cluster = super::support::TestCluster::start(1, 1, 1, 1, "");
    let node = cluster.addr(0);
    let mut child = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .arg("admin")
        .args(watch_args)
        .args(["--node", &node])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run shoal");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    assert!(lines.next().is_some_and(|l| l.is_ok()), "a first sample");
    cluster.stop(0);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    cluster.restart(0);
    let back_ms = shoal_stages::event::wall_clock_ms();
    // A sample taken before the stop may still be buffered: read until one taken after.
    let restarted = lines.take(40).map_while(Result::ok).any(|line| {
        let parsed: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        parsed["at_ms"].as_u64().is_some_and(|at| at >= back_ms)
    });
    let _ = child.kill();
    let output = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(restarted, "{stderr}");
    assert!(stderr.contains("the node does not answer"), "{stderr}");
    assert!(stderr.contains("the node answers again"), "{stderr}");
}

/// Goal: `admin stats --watch` outlives its node's restart: it says the node does not answer,
/// asks again every second, and goes on printing once the node is back (a trial's watch ended
/// at the first failure).
#[test]
fn admin_stats_watch_goes_on_after_its_node_restarts() {
    assert_watch_outlives_a_restart(&["stats", "--json", "--watch"]);
}

/// Goal: the same for `admin throttle --watch-ms` (it ended at the first failure, after
/// `admin stats --watch` had learnt not to).
#[test]
fn admin_throttle_watch_goes_on_after_its_node_restarts() {
    assert_watch_outlives_a_restart(&["throttle", "--json", "--watch-ms", "100"]);
}

/// Goal: a node that cannot be reached is named in the error, whether nothing listens at its
/// address, what listens never answers (a timeout, not "Resource temporarily unavailable"),
/// or what answers is not a shoal node.
#[test]
fn connection_errors_name_the_node_and_say_a_timeout_is_one() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = closed.local_addr().expect("addr").to_string();
    drop(closed);
    let (ok, _, err) = shoal(&["get", "--node", &addr, "k"]);
    assert!(!ok);
    assert!(err.contains(&format!("cannot connect to {addr}")), "{err}");
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = silent.local_addr().expect("addr").to_string();
    let (ok, _, err) = shoal(&["get", "--node", &addr, "k", "--timeout-secs", "1"]);
    assert!(!ok);
    assert!(
        err.contains(&addr) && err.contains("no progress within 1s"),
        "{err}"
    );
    // Something else answers there (a web server): its bytes are named as not shoal's, not
    // read as a 1.2 GB frame length without a word.
    let web = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = web.local_addr().expect("addr").to_string();
    let server = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let (mut conn, _) = web.accept().expect("accept");
        let mut request = [0u8; 4096];
        let _ = conn.read(&mut request);
        let _ = conn.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
        // Close only once the client has gone (reading to its end), so the close never
        // resets the connection before the client read the answer.
        let _ = conn.shutdown(std::net::Shutdown::Write);
        let _ = conn.read_to_end(&mut Vec::new());
    });
    let (ok, _, err) = shoal(&["get", "--node", &addr, "k", "--timeout-secs", "5"]);
    assert!(!ok);
    assert!(
        err.contains(&format!("bad frame from {addr} (is it a shoal node?)")),
        "{err}"
    );
    server.join().expect("the web server");
}

/// Goal: a node whose listen address is taken says which address, and fails before it opens
/// storage (no instance file renewed, no new dot actor named for a node that never ran).
#[test]
fn a_node_on_a_taken_port_names_it_and_leaves_its_storage_unopened() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let data = tempfile::tempdir().expect("tempdir");
    let dir = data.path().join("node");
    let dir_arg = dir.to_string_lossy().into_owned();
    let args = [
        "node",
        "--config",
        "config/single.toml",
        "--listen",
        &addr,
        "--data",
        &dir_arg,
    ];
    let (ok, _, err) = shoal(&args);
    assert!(!ok);
    assert!(
        err.contains(&format!("binding listen address {addr}")),
        "{err}"
    );
    let files = std::fs::read_dir(&dir).map_or(0, |entries| entries.count());
    assert_eq!(files, 0, "storage was opened in {}", dir.display());
}

/// Goal: a node started on a data directory another node holds says so and names it (before,
/// "storage: fjall: FjallError: Locked").
#[test]
fn a_node_on_a_data_dir_in_use_names_it() {
    let running = TestNode::start("");
    let dir = running
        .dir
        .path()
        .join("data")
        .to_string_lossy()
        .into_owned();
    let args = [
        "node",
        "--config",
        "config/single.toml",
        "--listen",
        "127.0.0.1:0",
        "--data",
        &dir,
    ];
    let (ok, _, err) = shoal(&args);
    assert!(!ok);
    assert!(
        err.contains(&format!("data_dir {dir} is in use by another process")),
        "{err}"
    );
}

/// Goal: a value too large for a command-line argument goes in through --value-file (any
/// bytes, or `-` for standard input) and reads back whole; an unreadable file is named; one
/// beyond the node's frame limit gets the node's reason.
#[test]
fn put_takes_a_large_value_from_a_file_or_standard_input() {
    use std::io::Write;
    let node = TestNode::start("");
    let addr = node.addr.as_str();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("value");
    let value: Vec<u8> = (0..300_000u32).map(|i| (i % 256) as u8).collect();
    std::fs::write(&path, &value).expect("write the value");
    let file = path.to_string_lossy().into_owned();
    let (ok, _, err) = shoal(&["put", "--node", addr, "big", "--value-file", &file]);
    assert!(ok, "{err}");
    // Beyond the node's frame limit: the node's own reason, not a mismatched reply id.
    let huge = dir.path().join("huge");
    std::fs::write(&huge, vec![7u8; 1_200_000]).expect("write the huge value");
    let huge_arg = huge.to_string_lossy().into_owned();
    let (ok, _, err) = shoal(&["put", "--node", addr, "huge", "--value-file", &huge_arg]);
    assert!(!ok);
    assert!(
        err.contains("frame of") && err.contains("exceeds the maximum"),
        "{err}"
    );
    let mut client =
        shoal::client::Client::connect(addr, std::time::Duration::from_secs(5)).expect("connect");
    let read = client
        .get(b"big", shoal::client::RequestOptions::default())
        .expect("get");
    assert_eq!(read.values, vec![value.clone()]);
    // Read back through the CLI: named, not printed garbled; whole in base64.
    let (ok, out, err) = shoal(&["get", "--node", addr, "big"]);
    assert!(ok, "{err}");
    assert!(out.starts_with("(300000 bytes, not UTF-8"), "{out}");
    let (ok, out, err) = shoal(&["get", "--node", addr, "big", "--json"]);
    assert!(ok, "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).expect("json");
    let encoded = json["values_base64"][0].as_str().expect("base64");
    use base64::Engine;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .expect("decodes");
    assert_eq!(decoded, value);

    let mut child = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(["put", "--node", addr, "piped", "--value-file", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("run shoal");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"from stdin")
        .expect("write");
    assert!(child.wait().expect("wait").success());
    let read = client
        .get(b"piped", shoal::client::RequestOptions::default())
        .expect("get");
    assert_eq!(read.values, vec![b"from stdin".to_vec()]);

    let missing = dir.path().join("missing").to_string_lossy().into_owned();
    let (ok, _, err) = shoal(&["put", "--node", addr, "k", "--value-file", &missing]);
    assert!(!ok);
    assert!(err.contains(&missing), "{err}");
}

/// Goal: `--timeout-secs 0` is refused with a usage error naming the option, before any
/// connection (it used to wait one second instead, silently).
#[test]
fn a_zero_timeout_is_refused_as_usage() {
    let (ok, _, stderr) = shoal(&["get", "--node", "127.0.0.1:1", "--timeout-secs", "0", "k"]);
    assert!(!ok);
    assert!(stderr.contains("--timeout-secs"), "{stderr}");
}

/// Goal: every `--json` output README's "JSON output" table lists has the top-level fields it
/// names, and each element of an array the row describes ("each: ...") has its fields, so
/// the table a script author reads cannot drift from what the node prints.
#[test]
fn cli_json_outputs_have_the_fields_the_readme_lists() {
    let node = TestNode::start("");
    let (ok, _, stderr) = shoal(&["put", "--node", &node.addr, "documented", "v"]);
    assert!(ok, "{stderr}");
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let mut checked = 0;
    for row in readme
        .lines()
        .filter(|l| l.starts_with("| `get ") || l.starts_with("| `admin "))
    {
        let columns: Vec<&str> = row.split('|').map(str::trim).collect();
        let command = columns[1].trim_matches('`').replace("KEY", "documented");
        let mut args: Vec<&str> = command.split_whitespace().collect();
        args.extend(["--node", &node.addr]);
        let (ok, out, stderr) = shoal(&args);
        assert!(ok, "{command}: {stderr}");
        let json: serde_json::Value =
            serde_json::from_str(out.lines().next().unwrap_or_default()).expect("one JSON line");
        for (field, each) in documented_fields(columns[2]) {
            let value = json
                .get(&field)
                .unwrap_or_else(|| panic!("{command}: no {field} in {out}"));
            if each.is_empty() {
                continue;
            }
            let first = value
                .as_array()
                .and_then(|a| a.first())
                .unwrap_or_else(|| panic!("{command}: {field} is no array with an element"));
            for inner in each {
                assert!(
                    first.get(&inner).is_some(),
                    "{command}: no {field}[].{inner} in {out}"
                );
            }
        }
        checked += 1;
    }
    assert_eq!(checked, 8, "README's table has 8 rows to check");
}

/// The fields a README table cell names: each backticked name outside parentheses, with the
/// backticked names of a "(each: ...)" after it (up to a `;`) as its elements' fields.
fn documented_fields(cell: &str) -> Vec<(String, Vec<String>)> {
    fn names(text: &str) -> Vec<String> {
        text.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect()
    }
    let mut fields: Vec<(String, Vec<String>)> = Vec::new();
    let mut rest = cell;
    while let Some(open) = rest.find('(') {
        fields.extend(names(&rest[..open]).into_iter().map(|n| (n, Vec::new())));
        let close = rest[open..].find(')').map_or(rest.len(), |c| open + c);
        let inside = &rest[open + 1..close];
        if let (Some(each), Some(last)) = (inside.strip_prefix("each:"), fields.last_mut()) {
            last.1 = names(each.split(';').next().unwrap_or_default());
        }
        rest = rest.get(close + 1..).unwrap_or_default();
    }
    fields.extend(names(rest).into_iter().map(|n| (n, Vec::new())));
    fields
}

/// Goal: staging a leave that would leave fewer nodes than N warns that each key would keep
/// fewer copies (a trial staged such a leave on 3 nodes with N=3 and was told nothing); a
/// change that keeps N nodes does not.
#[test]
fn staging_a_leave_below_n_nodes_warns_of_fewer_copies() {
    let cluster = super::support::TestCluster::start(3, 3, 2, 2, "");
    let node = cluster.addr(0);
    let (ok, out, err) = shoal(&["admin", "leave", "--node", &node, "--id", "n3"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("warning: the ring would have 2 nodes for N=3: each key would keep 2 copies"),
        "{out}"
    );
    let (ok, out, err) = shoal(&[
        "admin",
        "join",
        "--node",
        &node,
        "--id",
        "n9",
        "--addr",
        "127.0.0.1:9",
    ]);
    assert!(ok, "{err}");
    assert!(!out.contains("warning"), "3 nodes again: {out}");
}

/// Goal: `admin move` says where the member is now and that no commit is needed, and the ring
/// names the new address; a move to another member's address fails naming that member.
#[test]
fn admin_move_records_a_new_address_and_refuses_a_taken_one() {
    let cluster = super::support::TestCluster::start(2, 2, 1, 1, "");
    let (node, taken) = (cluster.addr(0), cluster.addr(1));
    let move_to = |id: &str, addr: &str, json: bool| {
        let mut args = vec!["admin", "move", "--node", &node, "--id", id, "--addr", addr];
        if json {
            args.push("--json");
        }
        shoal(&args)
    };
    let (ok, _, err) = move_to("n1", &taken, false);
    assert!(!ok, "a move to n2's address was taken");
    assert!(
        err.contains(&format!("{taken} is where member n2 listens")),
        "{err}"
    );
    let (ok, out, err) = move_to("n2", "127.0.0.1:9", false);
    assert!(ok, "{err}");
    assert!(
        out.contains("n2 is at 127.0.0.1:9 on n1") && out.contains("no commit is needed"),
        "{out}"
    );
    let ring = cluster.client(0).ring().expect("ring");
    let n2 = shoal_stages::NodeId::new("n2");
    assert_eq!(ring.addr_of(&n2), "127.0.0.1:9".parse().ok());
    let (ok, out, err) = move_to("n2", &taken, true);
    assert!(ok, "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(
        (json["moved"].as_str(), json["addr"].as_str()),
        (Some("n2"), Some(taken.as_str()))
    );
    let (ok, _, err) = move_to("n2", "127.0.0.1:0", false);
    assert!(!ok && err.contains("cannot be dialled"), "{err}");
}

/// Goal: a watch waits only for a node that is gone: a node that answers no (a pin of a stage
/// that does not exist) ends `admin throttle --watch-ms` at once with its error, instead of
/// asking again forever.
#[test]
fn a_watch_ends_at_a_refusal() {
    let cluster = super::support::TestCluster::start(1, 1, 1, 1, "");
    let node = cluster.addr(0);
    let mut child = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(["admin", "throttle", "--node", &node, "--watch-ms", "100"])
        .args(["--stage", "no_such_stage", "--rate", "5"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run shoal");
    let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut status = None;
    while status.is_none() && std::time::Instant::now() < until {
        status = child.try_wait().expect("wait");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = child.kill();
    let output = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        status.is_some_and(|s| !s.success()),
        "still watching: {stderr}"
    );
    assert!(stderr.contains("no_such_stage"), "{stderr}");
}
