//! A clean stop (SIGINT, SIGTERM, `Node::shutdown`): the node answers every client request it
//! already took before it closes a connection, and refuses the rest with `ShuttingDown`, so a
//! client knows which of its requests were applied and may send the others elsewhere.

use super::support::{config, config_text, TestNode, CLIENT_TIMEOUT};
use shoal::client::{Client, ClientError, RequestOptions};
use shoal::node::Node;
use shoal_stages::wire::{Bytes, Message, PutRequest};
use shoal_stages::ServiceError;
use std::collections::BTreeMap;

/// What became of one pipelined put.
#[derive(Debug, PartialEq)]
enum Outcome {
    Acknowledged,
    Refused(String),
    Unanswered,
}

fn put(i: usize) -> Message {
    Message::Put(PutRequest {
        key: Bytes::from(format!("k{i}").into_bytes()),
        context: None,
        value: Bytes::from(format!("v{i}").into_bytes()),
        w: None,
        timeout_ms: None,
        forwarded: false,
        durable: None,
        overwrite: false,
    })
}

/// Goal: requests in flight when a node is told to stop are answered, not cut off: every put
/// it acknowledged reads back after a restart, every put it refused (`ShuttingDown`, or a full
/// queue's `Overloaded`) and every put it never answered is absent. Without the drain the
/// stop closes the connection with taken writes applied but unanswered.
#[test]
fn a_stopping_node_answers_every_request_it_took_and_applies_none_it_did_not_answer() {
    // A drain that cannot run out on a slow machine: this test is about what it answers.
    let extra = "drain_timeout_ms = 600000\n[storage]\nsync = \"always\"\n";
    let mut node = TestNode::start(extra);
    let mut client = node.client();
    let mut ids = BTreeMap::new();
    // Sent before the stop: far more than the node answers before it (each batch of puts
    // waits for a journal flush).
    let before = 3000;
    for i in 0..before {
        ids.insert(client.send(&put(i)).expect("send before the stop"), i);
    }
    let running = node.node.take().expect("node running");
    let stopping = std::thread::spawn(move || running.shutdown());
    // Sent while it stops: refused, or never read once the connection closed.
    for i in before..before + 1000 {
        match client.send(&put(i)) {
            Ok(id) => {
                ids.insert(id, i);
            }
            Err(_) => break,
        }
    }
    let mut outcomes: BTreeMap<usize, Outcome> =
        ids.values().map(|&i| (i, Outcome::Unanswered)).collect();
    loop {
        match client.receive() {
            Ok((id, reply)) => {
                let Some(&i) = ids.get(&id) else {
                    panic!("a reply to request {id}, never sent: {reply}");
                };
                outcomes.insert(
                    i,
                    match reply {
                        Message::PutReply(_) => Outcome::Acknowledged,
                        Message::Error(
                            error @ (ServiceError::ShuttingDown | ServiceError::Overloaded { .. }),
                        ) => Outcome::Refused(error.kind().to_string()),
                        other => panic!("put k{i}: unexpected reply {other}"),
                    },
                );
            }
            Err(end @ (ClientError::Closed { .. } | ClientError::Io(_))) => {
                // Closed or reset, the client says what an unanswered request means here.
                let said = end.to_string();
                assert!(
                    said.starts_with(&node.addr) && said.contains("stopping cleanly"),
                    "{said}"
                );
                break;
            }
            Err(other) => panic!("after the stop: {other}"),
        }
    }
    // Closed on our side too, so the node's lingering close ends at once.
    drop(client);
    stopping.join().expect("shutdown ends");
    // How many were acknowledged, refused or never read depends on when the stop's flag is
    // seen (`a_draining_intake_refuses_new_requests_and_closes_clients_once_none_is_owed`
    // pins the refusal); what must hold whatever the timing is checked below.

    let restarted = Node::start(
        &config(&config_text(node.dir.path(), extra)),
        &shoal::logging::discard(),
    )
    .expect("restart");
    let mut reader =
        Client::connect(&restarted.local_addr().to_string(), CLIENT_TIMEOUT).expect("connect");
    let mut wrong = Vec::new();
    for (i, outcome) in &outcomes {
        let stored = reader
            .get(format!("k{i}").as_bytes(), RequestOptions::default())
            .expect("get after the restart")
            .values;
        let applied = stored == vec![format!("v{i}").into_bytes()];
        if applied != (*outcome == Outcome::Acknowledged) {
            wrong.push(format!("k{i}: {outcome:?}, stored {}", stored.len()));
        }
    }
    restarted.shutdown();
    assert!(
        wrong.is_empty(),
        "{} of {} puts applied without an acknowledgement or acknowledged and lost (first: \
         {:?})",
        wrong.len(),
        outcomes.len(),
        wrong.first()
    );
}

/// Goal: a node process stopped by SIGTERM writes its log to the end before it exits. Its
/// last lines ("node stopped", the stages' stops) were lost: a clone of the logger held by
/// the signal watcher kept the log's queue alive past `main`, and the process exited first.
/// The lines time each step, so a stop of seconds says where they went.
#[test]
fn a_node_stopped_by_sigterm_writes_its_log_to_the_end_with_each_steps_time() {
    use std::io::{BufRead, BufReader, Read};
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("node.toml");
    std::fs::write(&path, config_text(dir.path(), "")).expect("config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(["node", "--config"])
        .arg(&path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn shoal node");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let (listening, started) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = listening.send(line);
    });
    let (logged, exited) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut log = String::new();
        // Ends once the process has exited (its stderr closes).
        let _ = stderr.read_to_string(&mut log);
        let _ = logged.send(log);
    });
    let line = started
        .recv_timeout(CLIENT_TIMEOUT)
        .expect("the node started");
    assert!(line.contains("listening on"), "{line}");
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let log = exited
        .recv_timeout(CLIENT_TIMEOUT)
        .expect("the node exited in time");
    assert!(child.wait().expect("reaped").success(), "{log}");
    let last = log.lines().last().unwrap_or_default();
    assert!(
        last.contains("node stopped") && last.contains("took_ms"),
        "the log ends with: {last}"
    );
    // A slow stop says where its time went: each stage's stop, and the final flush's sync.
    assert!(
        log.lines().any(|l| l.contains("stage stopped")
            && l.contains("stage: commit")
            && l.contains("took_ms")),
        "{log}"
    );
    assert!(log.contains("final_sync_ms"), "{log}");
}
