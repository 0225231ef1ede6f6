//! Starting and stopping real nodes for tests: in-process (`Node::start`) where a graceful stop
//! is enough, as a child process where a test must kill -9.

use shoal::client::{Client, RequestOptions};
use shoal::config::Config;
use shoal::logging;
use shoal::node::Node;
use shoal_stages::storage::cpu_priority::threads_of;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// How long a test client waits for any reply; bounds every test.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// A single-node config on a free loopback port with data in `dir`. `extra` is appended TOML.
pub fn config_text(dir: &Path, extra: &str) -> String {
    format!(
        "[node]\nid = \"n1\"\nlisten = \"127.0.0.1:0\"\ndata_dir = {:?}\n{extra}\n",
        dir.join("data").display().to_string()
    )
}

/// Parses and validates a config text.
pub fn config(text: &str) -> Config {
    let config: Config = toml::from_str(text).expect("test config parses");
    config.validate().expect("test config is valid");
    config
}

/// A node running in this process, with its temp dir.
pub struct TestNode {
    pub node: Option<Node>,
    pub dir: tempfile::TempDir,
    pub addr: String,
}

impl TestNode {
    /// Starts a single node with `extra` config.
    pub fn start(extra: &str) -> TestNode {
        let dir = tempfile::tempdir().expect("temp dir");
        let node = Node::start(
            &config(&config_text(dir.path(), extra)),
            &logging::discard(),
        )
        .expect("node starts");
        let addr = node.local_addr().to_string();
        TestNode {
            node: Some(node),
            dir,
            addr,
        }
    }

    /// A new client connection.
    pub fn client(&self) -> Client {
        Client::connect(&self.addr, CLIENT_TIMEOUT).expect("connect")
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if let Some(node) = self.node.take() {
            node.shutdown();
        }
    }
}

/// The sorted sibling values of a key, as strings.
pub fn values(client: &mut Client, key: &str) -> Vec<String> {
    let result = client
        .get(key.as_bytes(), RequestOptions::default())
        .expect("get");
    let mut out: Vec<String> = result
        .values
        .iter()
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect();
    out.sort();
    out
}

/// A node running as a child process of the `shoal` binary.
pub struct NodeProcess {
    pub child: Child,
    pub addr: String,
}

impl NodeProcess {
    /// Starts `shoal node --config PATH` and waits for its "listening on" line.
    pub fn start(config_path: &Path) -> NodeProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_shoal"))
            .args(["node", "--config"])
            .arg(config_path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn shoal node");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(CLIENT_TIMEOUT)
            .expect("node printed its address in time");
        let addr = line
            .split_whitespace()
            .last()
            .expect("address on the line")
            .to_string();
        NodeProcess { child, addr }
    }

    /// kill -9.
    pub fn kill(mut self) {
        self.child.kill().expect("kill");
        self.child.wait().expect("reap");
    }

    /// A new client connection.
    pub fn client(&self) -> Client {
        Client::connect(&self.addr, CLIENT_TIMEOUT).expect("connect")
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes a config file into `dir` and returns its path.
pub fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("node.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

/// Free loopback ports, found by binding and releasing them (a test cluster needs every
/// member's address in every config before any node starts).
pub fn free_ports(count: usize) -> Vec<u16> {
    let listeners: Vec<std::net::TcpListener> = (0..count)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("addr").port())
        .collect()
}

/// A cluster of real nodes in this process, each on its own port and data directory, that a
/// test can stop and restart one node at a time (same port, same data).
pub struct TestCluster {
    /// Holds every node's data directory until the cluster is dropped.
    _dir: tempfile::TempDir,
    pub nodes: Vec<Option<Node>>,
    pub configs: Vec<Config>,
    /// The config text shared by every node: cluster settings, the initial members, extras.
    shared: String,
}

impl TestCluster {
    /// Starts `count` nodes n1..n{count} with replication factor `n` and quorums `r`/`w`;
    /// down peers are probed every 100 ms so returning nodes are noticed quickly.
    pub fn start(count: usize, n: usize, r: usize, w: usize, extra: &str) -> TestCluster {
        TestCluster::start_with(count, n, r, w, "", extra)
    }

    /// [`TestCluster::start`] with more `[cluster]` keys (`cluster_extra`, e.g. partitions).
    pub fn start_with(
        count: usize,
        n: usize,
        r: usize,
        w: usize,
        cluster_extra: &str,
        extra: &str,
    ) -> TestCluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let ports = free_ports(count);
        let members: String = ports
            .iter()
            .enumerate()
            .map(|(i, port)| {
                format!(
                    "[[cluster.members]]\nid = \"n{}\"\naddr = \"127.0.0.1:{port}\"\n",
                    i + 1
                )
            })
            .collect();
        let shared = format!(
            "[cluster]\nn = {n}\nr = {r}\nw = {w}\nrequest_timeout_ms = 2000\nprobe_interval_ms = 100\nreplica_timeout_ms = 300\n\
             secret = \"test-cluster-secret-0123456789\"\n{cluster_extra}{members}{extra}\n"
        );
        let configs: Vec<Config> = ports
            .iter()
            .enumerate()
            .map(|(i, port)| node_config(dir.path(), i + 1, *port, "", &shared))
            .collect();
        let mut cluster = TestCluster {
            _dir: dir,
            nodes: (0..count).map(|_| None).collect(),
            configs,
            shared,
        };
        for i in 0..count {
            cluster.restart(i);
        }
        cluster
    }

    /// Starts one more node, n{count + 1}, outside the ring (`await_join`): the initial
    /// members are its seeds, and it joins when an operator runs `admin join`. Returns its index.
    pub fn start_joining(&mut self) -> usize {
        let port = free_ports(1)[0];
        let i = self.nodes.len();
        let node = node_config(
            self._dir.path(),
            i + 1,
            port,
            "await_join = true\n",
            &self.shared,
        );
        self.configs.push(node);
        self.nodes.push(None);
        self.restart(i);
        i
    }

    /// The address of node `i` (0-based).
    pub fn addr(&self, i: usize) -> String {
        self.configs[i].node.listen.to_string()
    }

    /// A client of node `i`.
    pub fn client(&self, i: usize) -> Client {
        Client::connect(&self.addr(i), CLIENT_TIMEOUT).expect("connect")
    }

    /// Stops node `i` (graceful: its data stays).
    pub fn stop(&mut self, i: usize) {
        if let Some(node) = self.nodes[i].take() {
            node.shutdown();
        }
    }

    /// Starts node `i` again on its port and data directory.
    pub fn restart(&mut self, i: usize) {
        // SHOAL_TEST_LOG=debug shows the nodes' logs on stderr (to debug a failing test).
        let logger = match std::env::var("SHOAL_TEST_LOG") {
            Ok(level) => logging::logger(&level, "text"),
            Err(_) => logging::discard(),
        };
        let node = Node::start(&self.configs[i], &logger).expect("node starts");
        self.nodes[i] = Some(node);
    }
}

/// The config of node n{number} of a test cluster.
fn node_config(dir: &Path, number: usize, port: u16, node_extra: &str, shared: &str) -> Config {
    let data = dir.join(format!("n{number}"));
    config(&format!(
        "[node]\nid = \"n{number}\"\nlisten = \"127.0.0.1:{port}\"\ndata_dir = {:?}\n{node_extra}{shared}",
        data.display().to_string()
    ))
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.stop(i);
        }
    }
}

/// Polls `check` every 20 ms until it holds or `CLIENT_TIMEOUT` passes; returns whether it held.
pub fn eventually(mut check: impl FnMut() -> bool) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < CLIENT_TIMEOUT {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    check()
}

/// Total hints every running node of `cluster` holds for `target`.
pub fn hints_for(cluster: &TestCluster, target: &str) -> u64 {
    (0..cluster.nodes.len())
        .filter(|i| cluster.nodes[*i].is_some())
        .map(|i| hints_on(cluster, i, target))
        .sum()
}

/// Hints node `i` of `cluster` holds for `target`.
pub fn hints_on(cluster: &TestCluster, i: usize, target: &str) -> u64 {
    let reply = cluster.client(i).members().expect("members");
    reply
        .members
        .iter()
        .filter(|m| m.node.as_str() == target)
        .map(|m| m.hints_pending)
        .sum()
}

/// A cluster of `shoal node` processes (for tests that must kill -9), each with its own port,
/// config file and data directory.
pub struct ProcessCluster {
    _dir: tempfile::TempDir,
    pub configs: Vec<PathBuf>,
    pub nodes: Vec<Option<NodeProcess>>,
    pub addrs: Vec<String>,
    /// Nodes paused with SIGSTOP (they accept connections but never answer).
    pub paused: std::collections::BTreeSet<usize>,
}

impl ProcessCluster {
    /// Starts `count` processes n1..n{count} with N=`n`, R=`r`, W=`w` and sync = "always".
    pub fn start(count: usize, n: usize, r: usize, w: usize) -> ProcessCluster {
        ProcessCluster::start_durable(count, (n, r, w), "always", "none")
    }

    /// [`ProcessCluster::start`] with every node's `sync` and the cluster's `durable_writes`.
    ///
    /// A replica is judged silent after 1 s (not the in-process clusters' 300 ms): five node
    /// processes beside the rest of the suite on two cores make a live replica miss 300 ms now
    /// and then, and its request then goes to a fallback whose hint drains at once, which a
    /// test of a really silent replica took for a missing hint.
    pub fn start_durable(
        count: usize,
        (n, r, w): (usize, usize, usize),
        sync: &str,
        durable_writes: &str,
    ) -> ProcessCluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let ports = free_ports(count);
        let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let members: String = addrs
            .iter()
            .enumerate()
            .map(|(i, addr)| {
                format!(
                    "[[cluster.members]]\nid = \"n{}\"\naddr = \"{addr}\"\n",
                    i + 1
                )
            })
            .collect();
        let configs = addrs
            .iter()
            .enumerate()
            .map(|(i, addr)| {
                let data = dir.path().join(format!("n{}", i + 1));
                let text = format!(
                    "[node]\nid = \"n{}\"\nlisten = \"{addr}\"\ndata_dir = {:?}\n[storage]\nsync = \"{sync}\"\n\
                     [cluster]\nn = {n}\nr = {r}\nw = {w}\ndurable_writes = \"{durable_writes}\"\nrequest_timeout_ms = 4000\nprobe_interval_ms = 100\nreplica_timeout_ms = 1000\n\
                     secret = \"test-cluster-secret-0123456789\"\n{members}",
                    i + 1,
                    data.display().to_string()
                );
                let path = dir.path().join(format!("n{}.toml", i + 1));
                std::fs::write(&path, text).expect("write config");
                path
            })
            .collect::<Vec<_>>();
        let nodes = configs
            .iter()
            .map(|c| Some(NodeProcess::start(c)))
            .collect();
        ProcessCluster {
            _dir: dir,
            configs,
            nodes,
            addrs,
            paused: Default::default(),
        }
    }

    /// kill -9 of node `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(node) = self.nodes[i].take() {
            node.kill();
        }
    }

    /// Starts node `i` again on its config (same port and data).
    pub fn restart(&mut self, i: usize) {
        self.nodes[i] = Some(NodeProcess::start(&self.configs[i]));
    }

    /// SIGSTOP (`pause`) or SIGCONT node `i`: a paused node keeps its sockets open and
    /// answers nothing, the case of a replica that misses its deadline.
    pub fn signal(&mut self, i: usize, pause: bool) {
        if let Some(node) = &self.nodes[i] {
            let signal = if pause { "-STOP" } else { "-CONT" };
            let pid = node.child.id();
            let status = Command::new("kill")
                .args([signal, &pid.to_string()])
                .status()
                .expect("kill");
            assert!(status.success(), "kill {signal} failed");
            // kill returns once the signal is queued; the threads stop only as each is next
            // scheduled, and on two busy cores a node's loop can answer a request sent after
            // kill returned (a W=3 put then needed no fallback, and no hint was kept).
            if pause {
                assert!(
                    eventually(|| every_thread_stopped(pid)),
                    "node {i} (pid {pid}) did not stop: state {:?} (Z: it had exited)",
                    process_state(pid)
                );
            }
        }
        if pause {
            self.paused.insert(i);
        } else {
            self.paused.remove(&i);
        }
    }

    /// Hints all running, unpaused nodes hold, for anyone.
    pub fn hints_pending(&self) -> u64 {
        (0..self.nodes.len())
            .filter(|i| self.nodes[*i].is_some() && !self.paused.contains(i))
            .filter_map(|i| {
                Client::connect(&self.addrs[i], CLIENT_TIMEOUT)
                    .ok()?
                    .members()
                    .ok()
            })
            .map(|reply| reply.members.iter().map(|m| m.hints_pending).sum::<u64>())
            .sum()
    }
}

/// Whether every thread of process `pid` is stopped (state `T` in `/proc/<pid>/task/*/stat`,
/// or `t` where a debugger or `strace` traces it: a traced thread stops there instead).
fn every_thread_stopped(pid: u32) -> bool {
    threads_of(pid).is_ok_and(|threads| {
        threads.iter().all(|(tid, _)| {
            matches!(
                state_in(Path::new(&format!("/proc/{pid}/task/{tid}/stat"))),
                Some('T' | 't')
            )
        })
    })
}

/// The state letter of process `pid` (`/proc/<pid>/stat`), if it is still there.
fn process_state(pid: u32) -> Option<char> {
    state_in(Path::new(&format!("/proc/{pid}/stat")))
}

/// The state letter in a `stat` file: it follows the command name, which may hold spaces and
/// parentheses, so it is read after the last `)`.
fn state_in(stat: &Path) -> Option<char> {
    let text = std::fs::read_to_string(stat).ok()?;
    let (_, rest) = text.rsplit_once(')')?;
    rest.trim_start().chars().next()
}

/// A client of the node at `addr`.
pub fn client_of(addr: &str) -> Client {
    Client::connect(addr, CLIENT_TIMEOUT).expect("connect")
}

/// The integers of a set-workload value ("1,5,9"): what clients of the set workload
/// (TESTING.md §3) add to and read back.
pub fn parse_set(value: &[u8]) -> std::collections::BTreeSet<u64> {
    String::from_utf8_lossy(value)
        .split(',')
        .filter_map(|x| x.parse().ok())
        .collect()
}

/// Limits for the slow-reader tests: values up to 100 KB, and a client's unsent replies cut
/// off past 200 KB.
pub const SLOW_READER_LIMITS: &str =
    "[limits]\nmax_value_bytes = 100000\nmax_frame_bytes = 200000\nmax_write_buffer_bytes = 200000\n";

/// Stores a `value_bytes` value, then on a connection that never reads sends `requests` gets
/// of it (pausing `pause` after each), checks that another client is served meanwhile, and
/// reads what arrives until the node closes the hog's connection: how many replies it got.
pub fn replies_to_a_client_that_never_reads(
    node: &TestNode,
    value_bytes: usize,
    requests: usize,
    pause: Duration,
) -> usize {
    let options = RequestOptions {
        r: None,
        w: None,
        timeout_ms: None,
        durable: None,
    };
    let mut writer = node.client();
    writer
        .put(b"hogged", None, &vec![1u8; value_bytes], options)
        .expect("put");
    let get = shoal_stages::wire::Message::Get(shoal_stages::wire::GetRequest {
        key: shoal_stages::wire::Bytes::from(b"hogged".to_vec()),
        r: None,
        timeout_ms: None,
    });
    let mut hog = node.client();
    for _ in 0..requests {
        if hog.send(&get).is_err() {
            break;
        }
        if !pause.is_zero() {
            std::thread::sleep(pause);
        }
    }
    let mut other = node.client();
    other
        .put(b"alive", None, b"yes", options)
        .expect("the node still serves puts");
    assert!(values(&mut other, "alive").contains(&"yes".to_string()));
    let mut received = 0;
    while hog.receive().is_ok() {
        received += 1;
    }
    received
}
