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
    stream
        .write_all(&set_command(b"k", 8_000_000))
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

/// `SET key <value_bytes of x>` in RESP.
fn set_command(key: &[u8], value_bytes: usize) -> Vec<u8> {
    let mut command = format!("*3\r\n$3\r\nSET\r\n${}\r\n", key.len()).into_bytes();
    command.extend_from_slice(key);
    command.extend_from_slice(format!("\r\n${value_bytes}\r\n").as_bytes());
    command.resize(command.len() + value_bytes, b'x');
    command.extend_from_slice(b"\r\n");
    command
}

/// A raw socket to a node's door, reads bounded by 10 s.
fn raw_door(node: &TestNode) -> TcpStream {
    let addr = node
        .node
        .as_ref()
        .and_then(|n| n.redis_addr())
        .expect("the door listens");
    let stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream
}

/// Reads until `want` replies (lines starting with + - : $ or *, counting a bulk's payload as
/// part of it) have come, or the stream ends.
fn read_replies(stream: &mut TcpStream, want: usize) -> String {
    let mut text = String::new();
    let mut chunk = [0u8; 4096];
    while text.matches("\r\n").count() < want {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => text.push_str(&String::from_utf8_lossy(&chunk[..n])),
        }
    }
    text
}

/// Goal: inline commands (a line of words, as `nc` or `telnet` send them, which Redis
/// accepts) are answered like RESP ones, an empty line is not answered, and RESP and inline
/// mix on one connection (a trial got "Invalid frame type" and a closed connection).
#[test]
fn inline_commands_are_answered_like_resp_ones() {
    let node = TestNode::start("[redis]\nlisten = \"127.0.0.1:0\"\n");
    let mut stream = raw_door(&node);
    stream
        .write_all(b"PING\r\n\r\nSET inline v1\r\n*2\r\n$3\r\nGET\r\n$6\r\ninline\r\nget inline\n")
        .expect("send");
    let replies = read_replies(&mut stream, 6);
    assert_eq!(replies, "+PONG\r\n+OK\r\n$2\r\nv1\r\n$2\r\nv1\r\n");
}

/// Goal: a command begun and not completed within `frame_timeout_ms` (a client that sent half
/// of one, or a bulk length it never fills) gets an error naming the limit and the connection
/// closes, while an idle connection with nothing begun stays open (a trial found both kinds
/// open after 70 s, each holding a thread and a slot).
#[test]
fn a_command_left_unfinished_is_refused_after_the_frame_timeout() {
    let node =
        TestNode::start("[redis]\nlisten = \"127.0.0.1:0\"\n[limits]\nframe_timeout_ms = 300\n");
    let mut idle = raw_door(&node);
    let mut partial = raw_door(&node);
    partial
        .write_all(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$999999\r\nonly a little")
        .expect("send");
    let mut reply = Vec::new();
    partial
        .read_to_end(&mut reply)
        .expect("the error, then the end of the stream");
    let reply = String::from_utf8_lossy(&reply);
    assert!(
        reply.starts_with("-ERR Protocol error: a command begun and not completed within 300 ms"),
        "{reply}"
    );
    // The idle one, older than the timeout, still answers.
    idle.write_all(b"PING\r\n").expect("send");
    assert_eq!(read_replies(&mut idle, 1), "+PONG\r\n");
}

/// Goal: a connection past `[redis] max_connections` reads Redis's own refusal, even when it
/// sent a command first, rather than a reset with no message (what a trial's 257th client got).
#[test]
fn a_connection_past_the_limit_reads_why_it_was_refused() {
    let node = TestNode::start("[redis]\nlisten = \"127.0.0.1:0\"\nmax_connections = 1\n");
    let mut first = raw_door(&node);
    first.write_all(b"PING\r\n").expect("send");
    assert_eq!(read_replies(&mut first, 1), "+PONG\r\n");
    let mut second = raw_door(&node);
    // Sent before it reads: unread input at the close would reset the stream.
    let _ = second.write_all(b"PING\r\n");
    let mut reply = Vec::new();
    let _ = second.read_to_end(&mut reply);
    let reply = String::from_utf8_lossy(&reply);
    assert!(
        reply.starts_with("-ERR max number of clients reached (1"),
        "{reply}"
    );
}

/// Goal: a SET of a value over `[limits] max_value_bytes` is refused naming that limit, even
/// when the value is also past the node's frame limit (a trial got "frame of 1130598 bytes
/// exceeds the maximum of 1130505", which a Redis user cannot place).
#[test]
fn a_value_over_the_limit_is_refused_naming_max_value_bytes() {
    let node = TestNode::start("[redis]\nlisten = \"127.0.0.1:0\"\n");
    let mut stream = raw_door(&node);
    stream
        .write_all(&set_command(b"big", 1_130_505))
        .expect("send");
    let reply = read_replies(&mut stream, 1);
    assert_eq!(
        reply,
        "-ERR value of 1130505 bytes exceeds the maximum of 1048576 ([limits] max_value_bytes)\r\n"
    );
}

/// Goal: a client that streams commands, always with part of the next one sent, keeps its
/// connection past the frame timeout: the clock runs from the last completed command, not
/// from the first partial one (the first version closed such a pipelining client).
#[test]
fn a_client_streaming_commands_past_the_frame_timeout_stays_connected() {
    let node =
        TestNode::start("[redis]\nlisten = \"127.0.0.1:0\"\n[limits]\nframe_timeout_ms = 300\n");
    let mut stream = raw_door(&node);
    stream.write_all(b"PING\r\nPI").expect("send");
    let mut replies = read_replies(&mut stream, 1);
    // Ten steps of 100 ms: each completes the partial command and starts another.
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(100));
        stream.write_all(b"NG\r\nPI").expect("send");
        replies.push_str(&read_replies(&mut stream, 1));
    }
    stream.write_all(b"NG\r\n").expect("send");
    replies.push_str(&read_replies(&mut stream, 1));
    assert_eq!(replies, "+PONG\r\n".repeat(12), "{replies}");
}
