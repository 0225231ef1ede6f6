//! The Redis door: `[redis] listen` speaks RESP2, so `redis-cli` and `redis-benchmark` work
//! against a node unchanged. Each Redis connection gets a plain thread (no async runtime) that
//! decodes commands with the redis-protocol crate and carries each one out as native requests
//! to its own node over loopback: the same intake, parse, coordinator, quorums and
//! `Overloaded` answers as any client's.
//!
//! Semantics, for a client that knows nothing of versions:
//! - `SET k v` reconciles: a put with the context of the key's current versions at its
//!   coordinator (`PutRequest::overwrite`, applied under the key's lock there), so a Redis
//!   client sees last-writer-wins and siblings do not grow; only versions a coordinator has
//!   not seen yet (another node's concurrent SET) stay siblings. `MSET` is `SET` per pair.
//! - `GET k` of a key with siblings answers **one** of them: the greatest by byte order (the
//!   same on every node and every retry). `SHOAL.GET k` answers every sibling: an array of the
//!   context (base64, as `shoal get` prints it) followed by the values.
//! - `DEL` reads and deletes with the read's context; it counts keys that held a value.
//!   `EXISTS` counts keys that hold a value.
//! - `PING`, `ECHO`, `SELECT 0`, `QUIT`, and what redis-cli and redis-benchmark ask at start
//!   (`COMMAND`, `CONFIG GET`, `CLIENT ...`) are answered; any other command gets
//!   `ERR unknown command 'NAME'`. Inline commands (a line of words) are read like RESP ones
//!   (`redis_door/connection.rs`).

use crate::client::{Client, ClientError, RequestOptions};
use redis_protocol::resp2::decode::decode;
use redis_protocol::resp2::encode::encode;
use redis_protocol::resp2::types::{OwnedFrame, Resp2Frame};
use shoal_stages::intake::{LINGER_MAX_BYTES, LINGER_TIMEOUT};
use shoal_stages::wire::same_secret;
use slog::{debug, warn, Logger};
use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

mod connection;
use connection::{command_limit, linger, refuse, serve, ConnectionEnd, ConnectionLimits};

/// How often the accepting thread looks at its stop flag while nobody connects.
const ACCEPT_POLL: Duration = Duration::from_millis(50);
/// How long a request to the node may take before the door answers with an error.
const NODE_TIMEOUT: Duration = Duration::from_secs(10);

/// The door's settings.
#[derive(Clone, Debug)]
pub struct DoorSettings {
    /// The node's own native address (loopback) the door sends requests to.
    pub node: SocketAddr,
    /// Most Redis connections at once; one more is refused with an error.
    pub max_connections: usize,
    /// `[security] client_token`: a Redis client must `AUTH` with it first, and the door's
    /// own connection to the node sends it.
    pub token: Option<String>,
    /// `[limits] frame_timeout_ms`: a command begun and not completed in this time is
    /// refused and the connection closed (an idle connection, with nothing begun, stays).
    pub frame_timeout: Duration,
    /// `[limits] max_value_bytes`: a longer `SET` value is refused here, naming the limit,
    /// rather than by the node's frame limit in words a Redis user cannot place.
    pub max_value_bytes: usize,
    /// `[limits] max_key_bytes`: with the value's, how large a command is buffered.
    pub max_key_bytes: usize,
}

/// The running door.
pub struct RedisDoor {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// A handle on each open connection's socket, to end it when the node stops.
    connections: Connections,
}

/// Each open connection's socket (a second handle on it), by a number of the door's own.
type Connections = Arc<Mutex<BTreeMap<u64, TcpStream>>>;

impl RedisDoor {
    /// Binds `listen` and accepts Redis connections until [`RedisDoor::stop`].
    pub fn start(
        listen: SocketAddr,
        settings: DoorSettings,
        logger: Logger,
    ) -> Result<RedisDoor, std::io::Error> {
        let listener = TcpListener::bind(listen)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let connections = Connections::default();
        let thread = {
            let (stop, connections) = (Arc::clone(&stop), Arc::clone(&connections));
            std::thread::Builder::new()
                .name("redis-door".into())
                .spawn(move || accept(&listener, &settings, &stop, &connections, &logger))?
        };
        Ok(RedisDoor {
            addr,
            stop,
            thread: Some(thread),
            connections,
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting; open connections go on (their commands reach the node as a client's,
    /// so a stopping node's drain answers them) until [`RedisDoor::stop`].
    pub fn stop_accepting(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }

    /// Stops accepting and ends every open connection (its client sees the connection close;
    /// without this, each connection answered every later command "cannot reach the node"
    /// until the process exited).
    pub fn stop(mut self) {
        self.stop_accepting();
        let open = std::mem::take(&mut *lock_connections(&self.connections));
        for stream in open.values() {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

/// The registry, even if a connection thread panicked holding it (it holds only sockets).
fn lock_connections(
    connections: &Connections,
) -> std::sync::MutexGuard<'_, BTreeMap<u64, TcpStream>> {
    connections
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn accept(
    listener: &TcpListener,
    settings: &DoorSettings,
    stop: &AtomicBool,
    connections: &Connections,
    logger: &Logger,
) {
    let open = Arc::new(AtomicUsize::new(0));
    let lingering = Arc::new(AtomicUsize::new(0));
    let mut refused = 0u64;
    let mut next_id = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let (mut stream, peer) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(ACCEPT_POLL);
                continue;
            }
            Err(e) => {
                warn!(logger, "redis door: accept failed"; "error" => %e);
                std::thread::sleep(ACCEPT_POLL);
                continue;
            }
        };
        if open.load(Ordering::Relaxed) >= settings.max_connections {
            refuse(stream, settings.max_connections, &lingering);
            refused += 1;
            if refused
                .checked_ilog10()
                .is_some_and(|p| 10u64.pow(p) == refused)
            {
                warn!(logger, "redis door: a connection refused, max_connections are open";
                      "max_connections" => settings.max_connections, "times" => refused);
            }
            continue;
        }
        open.fetch_add(1, Ordering::Relaxed);
        let (conn_open, conn_logger) = (Arc::clone(&open), logger.clone());
        next_id += 1;
        let id = next_id;
        if let Ok(handle) = stream.try_clone() {
            lock_connections(connections).insert(id, handle);
        }
        let registry = Arc::clone(connections);
        let door = Door {
            node: settings.node,
            client: None,
            authorized: settings.token.is_none(),
            token: settings.token.clone(),
            max_value_bytes: settings.max_value_bytes,
        };
        let limits = ConnectionLimits {
            frame_timeout: settings.frame_timeout,
            command_bytes: command_limit(settings.max_key_bytes, settings.max_value_bytes),
        };
        let spawned = std::thread::Builder::new()
            .name("redis-conn".into())
            .spawn(move || {
                let ended = serve(&mut stream, door, limits);
                if let Err(e) = &ended {
                    debug!(conn_logger, "redis connection ended"; "peer" => %peer, "reason" => %e);
                }
                if let Err(ConnectionEnd::Protocol(_)) = ended {
                    linger(&mut stream);
                }
                lock_connections(&registry).remove(&id);
                conn_open.fetch_sub(1, Ordering::Relaxed);
            });
        if let Err(e) = spawned {
            lock_connections(connections).remove(&id);
            open.fetch_sub(1, Ordering::Relaxed);
            warn!(logger, "redis door: cannot start a connection thread"; "error" => %e);
        }
    }
}

/// One connection's way into its node.
struct Door {
    node: SocketAddr,
    /// Opened on the first command that needs the node, reopened after a failure.
    client: Option<Client>,
    /// The Redis client sent the right `AUTH` (or none is required).
    authorized: bool,
    /// The node's client token, if it requires one.
    token: Option<String>,
    /// `[limits] max_value_bytes`.
    max_value_bytes: usize,
}

/// An error reply.
fn error(text: impl Into<String>) -> OwnedFrame {
    OwnedFrame::Error(text.into())
}

fn ok() -> OwnedFrame {
    OwnedFrame::SimpleString(b"OK".to_vec())
}

/// A node error as Redis clients show errors: the node's typed error, named.
fn node_error(e: ClientError) -> OwnedFrame {
    error(format!("ERR {e}"))
}

impl Door {
    fn client(&mut self) -> Result<&mut Client, OwnedFrame> {
        if self.client.is_none() {
            let mut client = Client::connect(&self.node.to_string(), NODE_TIMEOUT)
                .map_err(|e| error(format!("ERR cannot reach the node: {e}")))?;
            if let Some(token) = &self.token {
                client
                    .auth(token)
                    .map_err(|e| error(format!("ERR the node refused the door: {e}")))?;
            }
            self.client = Some(client);
        }
        self.client
            .as_mut()
            .ok_or_else(|| error("ERR no connection to the node"))
    }

    /// Runs `request` on the node; a broken connection (one the node closed after refusing
    /// a frame, or a stream out of step) is dropped so the next command reconnects.
    fn call<T>(
        &mut self,
        request: impl FnOnce(&mut Client) -> Result<T, ClientError>,
    ) -> Result<T, OwnedFrame> {
        let result = request(self.client()?);
        if result.as_ref().is_err_and(ClientError::breaks_connection) {
            self.client = None;
        }
        result.map_err(node_error)
    }

    /// The reply to one command, and whether the connection ends after it.
    fn command(&mut self, frame: OwnedFrame) -> (OwnedFrame, bool) {
        let OwnedFrame::Array(parts) = frame else {
            return (
                error("ERR Protocol error: expected an array of bulk strings"),
                false,
            );
        };
        let mut args = Vec::with_capacity(parts.len());
        for part in parts {
            match part {
                OwnedFrame::BulkString(bytes) | OwnedFrame::SimpleString(bytes) => args.push(bytes),
                _ => {
                    return (
                        error("ERR Protocol error: arguments must be strings"),
                        false,
                    )
                }
            }
        }
        let Some(name) = args.first() else {
            return (error("ERR empty command"), false);
        };
        let name = String::from_utf8_lossy(name).to_ascii_uppercase();
        let rest = &args[1..];
        if name == "AUTH" {
            return (self.auth(rest), false);
        }
        if !self.authorized && name != "QUIT" {
            return (error("NOAUTH Authentication required."), false);
        }
        let reply = match (name.as_str(), rest.len()) {
            ("QUIT", _) => return (ok(), true),
            ("PING", 0) => OwnedFrame::SimpleString(b"PONG".to_vec()),
            ("PING", 1) | ("ECHO", 1) => OwnedFrame::BulkString(rest[0].clone()),
            ("SELECT", 1) if rest[0] == b"0" => ok(),
            ("SELECT", 1) => error("ERR DB index is out of range (shoal has one keyspace)"),
            // What clients ask at start: no command table, client names accepted, and every
            // configuration parameter asked for (redis-benchmark's `save`, `appendonly`) empty.
            ("COMMAND", _) => OwnedFrame::Array(Vec::new()),
            ("CONFIG", n) if n >= 2 && rest[0].eq_ignore_ascii_case(b"GET") => OwnedFrame::Array(
                rest[1..]
                    .iter()
                    .flat_map(|name| {
                        [
                            OwnedFrame::BulkString(name.clone()),
                            OwnedFrame::BulkString(Vec::new()),
                        ]
                    })
                    .collect(),
            ),
            ("CONFIG", _) => error("ERR only CONFIG GET is answered (with empty values)"),
            ("CLIENT", _) => ok(),
            ("GET", 1) => self.get(&rest[0]),
            ("SHOAL.GET", 1) => self.get_all(&rest[0]),
            ("SET", 2) => self.set(&rest[0], &rest[1]).unwrap_or_else(|e| e),
            ("SET", n) if n > 2 => error("ERR SET options are not supported by shoal"),
            ("MGET", n) if n > 0 => {
                OwnedFrame::Array(rest.iter().map(|key| self.get(key)).collect())
            }
            ("MSET", n) if n > 0 && n % 2 == 0 => {
                // Every value checked before any is written: MSET is all or nothing here.
                if let Some(refusal) = rest.chunks(2).find_map(|pair| self.too_large(&pair[1])) {
                    return (refusal, false);
                }
                let mut reply = ok();
                for pair in rest.chunks(2) {
                    if let Err(e) = self.set(&pair[0], &pair[1]) {
                        reply = e;
                        break;
                    }
                }
                reply
            }
            ("DEL", n) if n > 0 => self.count(rest, true),
            ("EXISTS", n) if n > 0 => self.count(rest, false),
            (
                "PING" | "ECHO" | "SELECT" | "GET" | "SHOAL.GET" | "SET" | "MGET" | "MSET" | "DEL"
                | "EXISTS",
                _,
            ) => error(format!(
                "ERR wrong number of arguments for '{}' command",
                name.to_ascii_lowercase()
            )),
            _ => error(format!(
                "ERR unknown command '{}'",
                String::from_utf8_lossy(&args[0])
            )),
        };
        (reply, false)
    }

    /// `AUTH token` or `AUTH user token` (the user is ignored): the node's client token.
    fn auth(&mut self, args: &[Vec<u8>]) -> OwnedFrame {
        let Some(given) = args.last().filter(|_| (1..=2).contains(&args.len())) else {
            return error("ERR wrong number of arguments for 'auth' command");
        };
        match &self.token {
            None => error("ERR AUTH <password> called without any password configured"),
            Some(token) if same_secret(token.as_bytes(), given) => {
                self.authorized = true;
                ok()
            }
            Some(_) => {
                self.authorized = false;
                error("WRONGPASS invalid username-password pair or user is disabled.")
            }
        }
    }

    /// `GET`: nil, the value, or the greatest sibling by byte order.
    fn get(&mut self, key: &[u8]) -> OwnedFrame {
        match self.call(|c| c.get(key, RequestOptions::default())) {
            Ok(read) => match read.values.into_iter().max() {
                Some(value) => OwnedFrame::BulkString(value),
                None => OwnedFrame::Null,
            },
            Err(e) => e,
        }
    }

    /// `SHOAL.GET`: the context, then every sibling.
    fn get_all(&mut self, key: &[u8]) -> OwnedFrame {
        match self.call(|c| c.get(key, RequestOptions::default())) {
            Ok(read) => {
                let mut items = vec![OwnedFrame::BulkString(
                    read.context.to_base64().into_bytes(),
                )];
                items.extend(read.values.into_iter().map(OwnedFrame::BulkString));
                OwnedFrame::Array(items)
            }
            Err(e) => e,
        }
    }

    /// `SET`: a put that supersedes every version its coordinator holds (last writer wins,
    /// atomically under the key's lock there, in one request).
    fn set(&mut self, key: &[u8], value: &[u8]) -> Result<OwnedFrame, OwnedFrame> {
        if let Some(refusal) = self.too_large(value) {
            return Err(refusal);
        }
        self.call(|c| c.overwrite(key, value, RequestOptions::default()))?;
        Ok(ok())
    }

    /// The refusal of a value over `[limits] max_value_bytes`, if it is.
    fn too_large(&self, value: &[u8]) -> Option<OwnedFrame> {
        (value.len() > self.max_value_bytes).then(|| {
            error(format!(
                "ERR value of {} bytes exceeds the maximum of {} ([limits] max_value_bytes)",
                value.len(),
                self.max_value_bytes
            ))
        })
    }

    /// `DEL` (`delete`) or `EXISTS`: how many of the keys hold a value (deleting them).
    fn count(&mut self, keys: &[Vec<u8>], delete: bool) -> OwnedFrame {
        let mut count = 0;
        for key in keys {
            let read = match self.call(|c| c.get(key, RequestOptions::default())) {
                Ok(read) => read,
                Err(e) => return e,
            };
            if read.values.is_empty() {
                continue;
            }
            if delete {
                let deleted =
                    self.call(|c| c.delete(key, &read.context, RequestOptions::default()));
                if let Err(e) = deleted {
                    return e;
                }
            }
            count += 1;
        }
        OwnedFrame::Integer(count)
    }
}
