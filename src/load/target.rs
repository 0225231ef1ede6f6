//! What a load run talks to: a shoal cluster (through the partition-aware client) or a Redis
//! server (its GET and SET, over a minimal RESP client), so both can be measured by the same
//! tool in one run.

use crate::client::{ClientError, Context, RequestOptions};
use crate::cluster_client::{ClusterClient, NodeHealth};
use serde::Serialize;
use shoal_stages::error::ServiceError;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Where the load goes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum TargetSpec {
    /// A shoal cluster: seed addresses and its replication factor N.
    Shoal {
        /// Seed nodes.
        seeds: Vec<String>,
        /// N, the preference-list length to route by; `None`: as the cluster reports it.
        replicas: Option<usize>,
    },
    /// A Redis server at host:port.
    Redis {
        /// host:port.
        addr: String,
    },
}

impl TargetSpec {
    /// Parses `--target`: `redis://HOST:PORT`, or `shoal://HOST:PORT[,HOST:PORT…]` / a bare
    /// address list (shoal).
    pub fn parse(text: &str, replicas: Option<usize>) -> Result<TargetSpec, String> {
        if let Some(addr) = text.strip_prefix("redis://") {
            if addr.is_empty() {
                return Err("redis:// needs HOST:PORT".into());
            }
            return Ok(TargetSpec::Redis {
                addr: addr.trim_end_matches('/').to_string(),
            });
        }
        let list = text.strip_prefix("shoal://").unwrap_or(text);
        let seeds: Vec<String> = list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
        if seeds.is_empty() {
            return Err(format!("no node addresses in {text:?}"));
        }
        Ok(TargetSpec::Shoal { seeds, replicas })
    }
}

/// A read's outcome: how many sibling values, and the context to write back with.
pub struct ReadResult {
    /// Sibling values returned.
    pub siblings: usize,
    /// The value's length when there is exactly one (lets the load phase leave a key alone
    /// that already holds a value of the size it would write).
    pub single_value_bytes: Option<usize>,
    /// Context for a following put (shoal only).
    pub context: Option<Context>,
}

/// Why one operation of a load run failed: the node's typed error, or a kind of failure the
/// client saw itself (connection, protocol, Redis error). Counted by `kind()`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpError {
    /// The node answered with a typed error.
    Service(ServiceError),
    /// No node could be reached (an I/O failure or a closed connection after the cluster
    /// client tried every candidate), named by a short kind (`io:ConnectionRefused`, or
    /// `no-answer-in-time(may-be-applied)` for a stalled node).
    Unreachable(String),
    /// Anything else, named by a short kind (`io:TimedOut`, `closed`, `redis-error`, ...).
    Other(String),
}

impl OpError {
    /// A short name to count errors by; a refusal from a full queue names the stage
    /// (`Overloaded(storage)`), the one to look at when tuning queues and admission.
    pub fn kind(&self) -> std::borrow::Cow<'_, str> {
        match self {
            OpError::Service(ServiceError::Overloaded { stage }) => {
                format!("Overloaded({stage})").into()
            }
            OpError::Service(e) => e.kind().into(),
            OpError::Unreachable(kind) | OpError::Other(kind) => kind.as_str().into(),
        }
    }
}

impl From<String> for OpError {
    fn from(kind: String) -> OpError {
        OpError::Other(kind)
    }
}

/// One connection's worth of a target.
pub enum Connection {
    /// shoal.
    Shoal(ClusterClient, RequestOptions),
    /// Redis.
    Redis(Resp),
}

/// Why a connection could not be opened: a short kind to count it by (`Overloaded` when a
/// node refused the ring fetch from a full queue, `io:ConnectionRefused`, ...) and the message.
#[derive(Debug)]
pub struct OpenError {
    /// What to count it as.
    pub kind: String,
    /// What to tell the user.
    pub message: String,
}

impl From<OpenError> for String {
    fn from(error: OpenError) -> String {
        error.message
    }
}

impl Connection {
    /// Connects to `spec` with per-request `options` (r/w, shoal only).
    pub fn open(spec: &TargetSpec, options: RequestOptions) -> Result<Connection, OpenError> {
        match spec {
            TargetSpec::Shoal { seeds, replicas } => {
                ClusterClient::connect_with(seeds, *replicas, Duration::from_secs(10))
                    .map(|c| Connection::Shoal(c, options))
                    .map_err(|e| OpenError {
                        message: format!(
                            "cannot reach the shoal cluster ({}): {e}",
                            seeds.join(",")
                        ),
                        kind: op_error(e).kind().to_string(),
                    })
            }
            TargetSpec::Redis { addr } => {
                Resp::connect(addr)
                    .map(Connection::Redis)
                    .map_err(|message| OpenError {
                        kind: "unreachable".into(),
                        message,
                    })
            }
        }
    }

    /// An error naming the first of `r` and `w` outside 1..=N, the N the cluster reports
    /// (every request would be refused `InvalidQuorum`); nothing for Redis.
    pub fn check_quorums(&self, r: Option<u8>, w: Option<u8>) -> Result<(), String> {
        let Connection::Shoal(client, _) = self else {
            return Ok(());
        };
        let n = client.cluster_replicas();
        for (name, quorum) in [("r", r), ("w", w)] {
            if let Some(quorum) = quorum.filter(|q| *q == 0 || usize::from(*q) > n) {
                return Err(format!(
                    "--{name} {quorum} is outside 1..={n} (the cluster's N, the replicas of a key)"
                ));
            }
        }
        Ok(())
    }

    /// Shares which nodes failed lately with the run's other workers (see
    /// `ClusterClient::share_health`); nothing for Redis.
    pub fn share_health(&mut self, health: &NodeHealth) {
        if let Connection::Shoal(client, _) = self {
            client.share_health(health.clone());
        }
    }

    /// Connects to every node of a cluster now (the workload's threads, before its clock
    /// starts); nothing for Redis, which has one.
    pub fn dial_all(&mut self) {
        if let Connection::Shoal(client, _) = self {
            client.dial_all();
        }
    }

    /// Reads a key.
    pub fn get(&mut self, key: &[u8]) -> Result<ReadResult, OpError> {
        match self {
            Connection::Shoal(client, options) => client
                .get(key, *options)
                .map(|r| ReadResult {
                    siblings: r.values.len(),
                    single_value_bytes: match r.values.as_slice() {
                        [one] => Some(one.len()),
                        _ => None,
                    },
                    context: Some(r.context),
                })
                .map_err(op_error),
            Connection::Redis(redis) => redis
                .get(key)
                .map(|length| ReadResult {
                    siblings: usize::from(length.is_some()),
                    single_value_bytes: length,
                    context: None,
                })
                .map_err(OpError::Other),
        }
    }

    /// Writes a key, with a context when the caller has one; returns the new context.
    pub fn put(
        &mut self,
        key: &[u8],
        context: Option<&Context>,
        value: &[u8],
    ) -> Result<Option<Context>, OpError> {
        match self {
            Connection::Shoal(client, options) => client
                .put(key, context, value, *options)
                .map(Some)
                .map_err(op_error),
            Connection::Redis(redis) => {
                redis.set(key, value).map(|()| None).map_err(OpError::Other)
            }
        }
    }
}

/// A client error as a load-run error: typed when the node answered, named otherwise.
pub fn op_error(error: ClientError) -> OpError {
    OpError::Other(match error {
        ClientError::Service(e) | ClientError::Refused(e) => return OpError::Service(e),
        // A node that did not answer in time: named for what it means, as the client's own
        // error does (a trial read "io:WouldBlock" as a bug in the tool).
        ClientError::Io(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            return OpError::Unreachable("no-answer-in-time(may-be-applied)".into())
        }
        ClientError::Io(e) => return OpError::Unreachable(format!("io:{:?}", e.kind())),
        ClientError::Closed { .. } => return OpError::Unreachable("closed".into()),
        ClientError::Frame { .. } | ClientError::Wire(_) => "protocol".into(),
        ClientError::UnexpectedReply(_) => "unexpected-reply".into(),
        ClientError::Usage(_) => "usage".into(),
    })
}

/// A minimal RESP2 client: enough for GET and SET.
pub struct Resp {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    line: String,
}

impl Resp {
    /// Connects to a Redis server.
    pub fn connect(addr: &str) -> Result<Resp, String> {
        let stream =
            TcpStream::connect(addr).map_err(|e| format!("cannot reach redis at {addr}: {e}"))?;
        let _ = stream.set_nodelay(true);
        let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
        let writer = stream.try_clone().map_err(|e| e.to_string())?;
        Ok(Resp {
            reader: BufReader::new(stream),
            writer,
            line: String::new(),
        })
    }

    fn command(&mut self, parts: &[&[u8]]) -> Result<(), String> {
        let mut frame = format!("*{}\r\n", parts.len()).into_bytes();
        for part in parts {
            frame.extend_from_slice(format!("${}\r\n", part.len()).as_bytes());
            frame.extend_from_slice(part);
            frame.extend_from_slice(b"\r\n");
        }
        self.writer
            .write_all(&frame)
            .map_err(|e| format!("io:{:?}", e.kind()))
    }

    fn read_line(&mut self) -> Result<&str, String> {
        self.line.clear();
        match self.reader.read_line(&mut self.line) {
            Ok(0) => Err("closed".into()),
            Ok(_) => Ok(self.line.trim_end()),
            Err(e) => Err(format!("io:{:?}", e.kind())),
        }
    }

    /// GET: the value's length, or None when the key has none.
    pub fn get(&mut self, key: &[u8]) -> Result<Option<usize>, String> {
        self.command(&[b"GET", key])?;
        let header = self.read_line()?.to_string();
        match header.as_bytes().first() {
            Some(b'$') => {
                let length: i64 = header[1..].parse().map_err(|_| "protocol".to_string())?;
                if length < 0 {
                    return Ok(None);
                }
                // Bounded: a value plus its CRLF, never more than Redis's 512 MB limit.
                let mut body = vec![0; (length as usize).min(512 << 20) + 2];
                self.reader
                    .read_exact(&mut body)
                    .map_err(|e| format!("io:{:?}", e.kind()))?;
                Ok(Some(body.len() - 2))
            }
            Some(b'-') => Err("redis-error".into()),
            _ => Err("protocol".into()),
        }
    }

    /// SET.
    pub fn set(&mut self, key: &[u8], value: &[u8]) -> Result<(), String> {
        self.command(&[b"SET", key, value])?;
        match self.read_line()? {
            "+OK" => Ok(()),
            line if line.starts_with('-') => Err("redis-error".into()),
            _ => Err("protocol".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: a load run's error counts name the stage whose full queue refused (the one to
    /// tune), and every other error by its kind.
    #[test]
    fn refusals_are_counted_by_the_stage_that_refused() {
        let full = OpError::Service(ServiceError::Overloaded {
            stage: "storage".into(),
        });
        assert_eq!(full.kind(), "Overloaded(storage)");
        let unreachable = OpError::Service(ServiceError::PeerUnreachable {
            node: "n2".into(),
            why: None,
        });
        assert_eq!(unreachable.kind(), "PeerUnreachable");
        assert_eq!(
            OpError::from("io:TimedOut".to_string()).kind(),
            "io:TimedOut"
        );
        let stalled = op_error(ClientError::Io(std::io::Error::from(
            std::io::ErrorKind::WouldBlock,
        )));
        assert_eq!(stalled.kind(), "no-answer-in-time(may-be-applied)");
    }
}
