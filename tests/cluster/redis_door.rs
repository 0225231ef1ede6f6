//! The Redis door with real Redis clients: `redis-cli` and `redis-benchmark` (Debian's
//! redis-tools, which `tools/test-deps.sh` and CI install) against a real node.

use super::support::TestNode;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

/// `redis-cli -p PORT ARGS…`: its stdout, trimmed.
fn redis_cli(port: u16, args: &[&str]) -> String {
    let output = Command::new("redis-cli")
        .arg("-p")
        .arg(port.to_string())
        .args(args)
        .output()
        .expect("redis-cli runs");
    assert!(output.status.success(), "redis-cli {args:?} failed");
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// The port of `node`'s Redis door.
fn door_port(node: &TestNode) -> u16 {
    node.node
        .as_ref()
        .and_then(|n| n.redis_addr())
        .expect("the door listens")
        .port()
}

fn installed(tool: &str) -> bool {
    Command::new(tool).arg("--version").output().is_ok()
}

/// Goal: Redis's own clients work against the door unchanged (SET, GET, DEL, EXISTS, MSET,
/// MGET, PING; SET reconciles so a key keeps one value; `SHOAL.GET` shows the context and
/// the siblings; an unknown command is an error naming it), and
/// `redis-benchmark -t set,get -n 100000 -c 50` runs with no error. Method: a real node with
/// `[redis] listen`, the real tools as child processes.
#[test]
fn redis_cli_and_redis_benchmark_work_against_the_door() {
    if !installed("redis-cli") || !installed("redis-benchmark") {
        eprintln!("redis-cli or redis-benchmark is not installed: run tools/test-deps.sh");
        return;
    }
    let node = TestNode::start("[redis]\nlisten = \"127.0.0.1:0\"\n[storage]\nsync = \"none\"\n");
    let port = door_port(&node);
    assert_eq!(redis_cli(port, &["ping"]), "PONG");
    assert_eq!(redis_cli(port, &["set", "k", "v1"]), "OK");
    assert_eq!(redis_cli(port, &["set", "k", "v2"]), "OK");
    assert_eq!(redis_cli(port, &["get", "k"]), "v2");
    let all = redis_cli(port, &["shoal.get", "k"]);
    let lines: Vec<&str> = all.lines().collect();
    assert_eq!(
        lines.len(),
        2,
        "the context and one value, no sibling: {all}"
    );
    assert_eq!(lines[1], "v2");
    assert_eq!(redis_cli(port, &["mset", "a", "1", "b", "2"]), "OK");
    assert_eq!(redis_cli(port, &["mget", "a", "b", "nope"]), "1\n2");
    assert_eq!(redis_cli(port, &["exists", "a", "b", "nope"]), "2");
    assert_eq!(redis_cli(port, &["del", "a", "nope"]), "1");
    assert_eq!(redis_cli(port, &["get", "a"]), "");
    let unknown = redis_cli(port, &["flushall"]);
    assert!(unknown.contains("unknown command 'flushall'"), "{unknown}");

    // Bounded: redis-benchmark retries a refused connection forever.
    let output = Command::new("timeout")
        .args(["300", "redis-benchmark"])
        .args(["-p", &port.to_string(), "-t", "set,get", "-n", "100000"])
        .args(["-c", "50", "-q"])
        .output()
        .expect("redis-benchmark runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let report = format!("{stdout}\n{stderr}");
    assert!(
        !report.contains("Error") && !report.contains("ERR"),
        "redis-benchmark saw errors: {report}"
    );
    for test in ["SET:", "GET:"] {
        assert!(
            report.contains(test) && report.contains("requests per second"),
            "no {test} result: {report}"
        );
    }
    assert_eq!(
        redis_cli(port, &["get", "k"]),
        "v2",
        "the node still serves"
    );
}

/// Goal: a command over the door's limit, still being sent when the door refuses it, gets
/// the door's protocol error and then a clean end of stream, not a reset that fails the
/// client's send before it reads the error (the door reads and throws away the rest before
/// closing, as the node's own intake does). Method: 8 MB of one bulk string over a raw
/// socket, no Redis client needed.
#[test]
fn a_command_over_the_limit_gets_the_error_not_a_reset() {
    let node = TestNode::start("[redis]\nlisten = \"127.0.0.1:0\"\n");
    let addr = node
        .node
        .as_ref()
        .and_then(|n| n.redis_addr())
        .expect("the door listens");
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let value = vec![b'x'; 8_000_000];
    let mut command = format!("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n${}\r\n", value.len()).into_bytes();
    command.extend_from_slice(&value);
    command.extend_from_slice(b"\r\n");
    stream
        .write_all(&command)
        .expect("the door reads the whole command");
    let mut reply = Vec::new();
    stream
        .read_to_end(&mut reply)
        .expect("the error, then a clean end of stream");
    let reply = String::from_utf8_lossy(&reply);
    assert!(
        reply.starts_with("-ERR Protocol error: a command over"),
        "{reply}"
    );
}

/// Goal: a Redis connection open when its node stops cleanly is answered up to the stop and
/// then closed; it neither stays open nor answers "cannot reach the node" to every later
/// command until the process exits (a trial saw 14,410 such replies in 0.4 s).
#[test]
fn a_redis_connection_is_closed_when_its_node_stops() {
    let mut node = TestNode::start("[redis]\nlisten = \"127.0.0.1:0\"\n");
    let port = door_port(&node);
    let mut redis = TcpStream::connect(("127.0.0.1", port)).expect("connect to the door");
    redis
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    redis.write_all(b"*1\r\n$4\r\nPING\r\n").expect("send");
    let mut reply = [0u8; 7];
    redis.read_exact(&mut reply).expect("the door answers");
    assert_eq!(&reply, b"+PONG\r\n");
    if let Some(running) = node.node.take() {
        running.shutdown();
    }
    let mut rest = Vec::new();
    match redis.read_to_end(&mut rest) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("the connection stayed open after the stop: {e}"),
    }
    assert!(rest.is_empty(), "nothing after the stop: {rest:?}");
}
