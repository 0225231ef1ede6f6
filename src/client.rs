//! A blocking client for one shoal node over one TCP connection. The CLI, the load tool and
//! the cluster tests use it; it speaks exactly the wire protocol a third-party client would.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use shoal_stages::membership::Membership;
use shoal_stages::versioning::VersionSet;
use shoal_stages::wire::{
    AaeReport, AuthRequest, Bytes, DeleteRequest, FrameDecoder, FrameError, GetLocalRequest,
    GetRequest, MembersReply, Message, PlanReply, PlanRequest, PutRequest, RingReply, StatsReply,
    ThrottleChange, ThrottleReply, ThrottleRequest, WireError,
};
pub use shoal_stages::Durability;
use shoal_stages::ServiceError;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Largest reply frame the client accepts (a get of several maximal siblings).
const MAX_REPLY_FRAME_BYTES: usize = 64 * 1024 * 1024;

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The node answered with a typed error.
    #[error("{0}")]
    Service(#[from] ServiceError),
    /// The connection failed or timed out.
    #[error("connection: {0}")]
    Io(#[from] io::Error),
    /// The node's bytes were not a valid frame (the address may not be a shoal node's).
    #[error("bad frame from {addr} (is it a shoal node?): {error}")]
    Frame {
        /// The address that sent them.
        addr: String,
        /// What was wrong.
        error: FrameError,
    },
    /// The node refused a frame it could not take (too large, malformed) and closed the
    /// connection: the error says why. The connection is dead; the node is not.
    #[error("{0}")]
    Refused(ServiceError),
    /// The node's frame was not a valid message.
    #[error("bad message from node: {0}")]
    Wire(#[from] WireError),
    /// The node closed the connection with no answer to come.
    #[error("{addr} closed the connection without answering{UNANSWERED}")]
    Closed {
        /// The node, as the caller named it.
        addr: String,
    },
    /// The reply does not match the request.
    #[error("unexpected reply: {0}")]
    UnexpectedReply(String),
    /// An address or context given by the user is unusable.
    #[error("{0}")]
    Usage(String),
}

/// What a request a node left unanswered means. A connection ends unanswered for many
/// reasons (a crash, a refused frame, a deadline, the network), and the request may have
/// been applied; but a node that stops cleanly answers every request it took before its
/// drain ends (README, a clean stop), so then it was not.
const UNANSWERED: &str = ": the request may have been applied, unless the node was stopping cleanly and its drain finished in time (then it was not)";

impl ClientError {
    /// Whether the connection the error came from can carry no more requests: anything but
    /// the node's typed answer to the request, or a usage error found before sending. (The
    /// node closes after a refused frame, and a stream out of step stays out of step.)
    pub fn breaks_connection(&self) -> bool {
        !matches!(self, ClientError::Service(_) | ClientError::Usage(_))
    }
}

/// An opaque context from a get or put, to pass to the next put or delete of the key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Context(pub Vec<u8>);

impl Context {
    /// The context as a URL-safe base64 string (how the CLI prints it).
    pub fn to_base64(&self) -> String {
        URL_SAFE_NO_PAD.encode(&self.0)
    }

    /// Parses a context printed by [`Context::to_base64`].
    pub fn from_base64(text: &str) -> Result<Context, ClientError> {
        URL_SAFE_NO_PAD
            .decode(text.trim())
            .map(Context)
            .map_err(|e| ClientError::Usage(format!("context is not valid base64: {e}")))
    }
}

/// A get's result: sibling values (empty when absent) and the context covering them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GetResult {
    /// The sibling values.
    pub values: Vec<Vec<u8>>,
    /// Pass to the put that reconciles them.
    pub context: Context,
    /// The answering node's membership version (newer than the client's ring: refresh).
    pub membership_version: u64,
}

/// Per-request options; `None` takes the node's default.
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestOptions {
    /// Read quorum.
    pub r: Option<u8>,
    /// Write quorum.
    pub w: Option<u8>,
    /// Deadline at the node.
    pub timeout_ms: Option<u32>,
    /// Durable writes for a put or delete (Dynamo §6.1: how many replicas flush before the
    /// reply); the cluster's `durable_writes` when absent.
    pub durable: Option<Durability>,
}

impl RequestOptions {
    /// Every option the node's default (`Default::default()`, usable in a `const`).
    pub const DEFAULT: RequestOptions = RequestOptions {
        r: None,
        w: None,
        timeout_ms: None,
        durable: None,
    };
}

/// What a put or delete's reply says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PutResult {
    /// The new version's context.
    pub context: Context,
    /// The answering node's membership version (newer than the client's ring: refresh).
    pub membership_version: u64,
    /// How many acknowledging replicas had the write on disk.
    pub durable_copies: u8,
}

/// The environment variable whose value [`Client::connect`] sends as the client token.
pub const TOKEN_VARIABLE: &str = "SHOAL_CLIENT_TOKEN";

/// A connection to one node.
pub struct Client {
    stream: TcpStream,
    decoder: FrameDecoder,
    next_request_id: u64,
    buffer: Vec<u8>,
    /// The node, as the caller named it: every connection error says which node failed.
    node: String,
    /// How long a reply may take.
    timeout: Duration,
    /// [`Client::finish_sending`] shut the sending side: a failed send is this side's doing,
    /// not the node's.
    sending_finished: bool,
}

impl Client {
    /// Connects to `addr` (host:port), with `timeout` for connecting and for each reply.
    pub fn connect(addr: &str, timeout: Duration) -> Result<Client, ClientError> {
        let resolved: Vec<SocketAddr> = addr
            .to_socket_addrs()
            .map_err(|e| ClientError::Usage(format!("bad node address {addr:?}: {e}")))?
            .collect();
        let first = resolved.first().ok_or_else(|| {
            ClientError::Usage(format!("node address {addr:?} resolves to nothing"))
        })?;
        let stream = TcpStream::connect_timeout(first, timeout).map_err(|e| {
            // A refused connect is the one failure that says what happened to the request:
            // it was never sent. The bare OS error reads like any other during a stop.
            let what = if e.kind() == io::ErrorKind::ConnectionRefused {
                ": nothing listens there (the node is not running, or it stopped); the request was not sent"
            } else {
                ""
            };
            ClientError::Io(io::Error::new(
                e.kind(),
                format!("cannot connect to {addr}: {e}{what}"),
            ))
        })?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let mut client = Client {
            stream,
            decoder: FrameDecoder::new(MAX_REPLY_FRAME_BYTES),
            next_request_id: 1,
            buffer: vec![0; 64 * 1024],
            node: addr.to_string(),
            timeout,
            sending_finished: false,
        };
        // The CLI, the load tool and the cluster client all connect here: one variable gives
        // them the node's `[security] client_token`.
        if let Some(token) = std::env::var(TOKEN_VARIABLE).ok().filter(|t| !t.is_empty()) {
            client.auth(&token)?;
        }
        Ok(client)
    }

    /// Sends the node's client token (`[security] client_token`); until then a node that
    /// requires one refuses every request with `Unauthorized`, and a wrong one closes the
    /// connection.
    pub fn auth(&mut self, token: &str) -> Result<(), ClientError> {
        let request = Message::Auth(AuthRequest {
            token: token.to_string(),
        });
        match self.call(&request)? {
            Message::AuthOk => Ok(()),
            other => Err(ClientError::UnexpectedReply(other.to_string())),
        }
    }

    /// Sends a request and waits for its reply; a typed error reply becomes `Err(Service)`.
    pub fn call(&mut self, request: &Message) -> Result<Message, ClientError> {
        let id = self.send(request)?;
        let (reply_id, reply) = self.receive()?;
        if let (0, Message::Error(error)) = (reply_id, &reply) {
            // Request id 0 is the node's answer to a frame it could not take (too large,
            // malformed) before it closes the connection: the error says why.
            return Err(ClientError::Refused(error.clone()));
        }
        if reply_id != id {
            return Err(ClientError::UnexpectedReply(format!(
                "reply id {reply_id} for request {id}"
            )));
        }
        match reply {
            Message::Error(error) => Err(ClientError::Service(error)),
            other => Ok(other),
        }
    }

    /// Sends a request without waiting (for pipelining); returns its request id.
    pub fn send(&mut self, request: &Message) -> Result<u64, ClientError> {
        let id = self.next_request_id;
        self.next_request_id += 1;
        let frame = request.encode(id)?;
        if let Err(error) = self.stream.write_all(&frame) {
            // A node that refuses a frame answers, then closes; if it dropped the stream
            // while this was still sending (past its lingering close), the send fails with a
            // reset or a broken pipe, but the answer saying why may already be here to read
            // (the reset empties the sending queue, not the receiving one).
            let reset = matches!(
                error.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
            );
            if reset && !self.sending_finished {
                if let Ok((0, Message::Error(refusal))) = self.receive() {
                    return Err(ClientError::Refused(refusal));
                }
            }
            return Err(self.io_error(error));
        }
        Ok(id)
    }

    /// An I/O error on the connection, naming the node; a read or write that timed out says
    /// so (the OS reports it as "Resource temporarily unavailable"). The kind is kept.
    fn io_error(&self, error: io::Error) -> ClientError {
        let what = match error.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => format!(
                "{}: no progress within {:?} (is it a shoal node, and is it overloaded or \
                 stalled?); a request it took may still be applied when it goes on",
                self.node, self.timeout
            ),
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => format!("{}: {error}{UNANSWERED}", self.node),
            _ => format!("{}: {error}", self.node),
        };
        ClientError::Io(io::Error::new(error.kind(), what))
    }

    /// Shuts the sending side of the connection (after the last request): the node still
    /// answers every request sent before, then closes.
    pub fn finish_sending(&mut self) -> Result<(), ClientError> {
        self.sending_finished = true;
        self.stream
            .shutdown(std::net::Shutdown::Write)
            .map_err(|e| self.io_error(e))
    }

    /// Sends raw bytes (for tests of malformed input).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.stream.write_all(bytes).map_err(|e| self.io_error(e))
    }

    /// Waits for the next reply frame: its request id and message.
    pub fn receive(&mut self) -> Result<(u64, Message), ClientError> {
        loop {
            let next = self
                .decoder
                .next_frame()
                .map_err(|error| ClientError::Frame {
                    addr: self.node.clone(),
                    error,
                })?;
            if let Some(frame) = next {
                return Ok((frame.request_id, Message::decode(&frame)?));
            }
            let n = self
                .stream
                .read(&mut self.buffer)
                .map_err(|e| self.io_error(e))?;
            if n == 0 {
                return Err(ClientError::Closed {
                    addr: self.node.clone(),
                });
            }
            self.decoder.extend(&self.buffer[..n]);
        }
    }

    /// `get(key)`: sibling values and their context.
    pub fn get(&mut self, key: &[u8], options: RequestOptions) -> Result<GetResult, ClientError> {
        let request = Message::Get(GetRequest {
            key: Bytes::from(key.to_vec()),
            r: options.r,
            timeout_ms: options.timeout_ms,
        });
        match self.call(&request)? {
            Message::GetReply(reply) => Ok(GetResult {
                values: reply.values.into_iter().map(Bytes::into_vec).collect(),
                context: Context(reply.context.into_vec()),
                membership_version: reply.membership_version,
            }),
            other => Err(ClientError::UnexpectedReply(other.to_string())),
        }
    }

    /// `put(key, context, value)`: returns the new version's context.
    pub fn put(
        &mut self,
        key: &[u8],
        context: Option<&Context>,
        value: &[u8],
        options: RequestOptions,
    ) -> Result<Context, ClientError> {
        self.put_full(key, context, value, options)
            .map(|result| result.context)
    }

    /// `put`, with everything its reply says: also the answering node's membership version
    /// (the refresh hint) and the durable copies.
    pub fn put_full(
        &mut self,
        key: &[u8],
        context: Option<&Context>,
        value: &[u8],
        options: RequestOptions,
    ) -> Result<PutResult, ClientError> {
        self.put_request(key, context, value, options, false)
    }

    /// A last-writer-wins put: the new value supersedes every version the coordinating
    /// replica holds, whatever this client saw (Redis's `SET`). Versions only other replicas
    /// hold still come back as siblings.
    pub fn overwrite(
        &mut self,
        key: &[u8],
        value: &[u8],
        options: RequestOptions,
    ) -> Result<PutResult, ClientError> {
        self.put_request(key, None, value, options, true)
    }

    fn put_request(
        &mut self,
        key: &[u8],
        context: Option<&Context>,
        value: &[u8],
        options: RequestOptions,
        overwrite: bool,
    ) -> Result<PutResult, ClientError> {
        let request = Message::Put(PutRequest {
            key: Bytes::from(key.to_vec()),
            context: context.map(|c| Bytes::from(c.0.clone())),
            value: Bytes::from(value.to_vec()),
            w: options.w,
            timeout_ms: options.timeout_ms,
            forwarded: false,
            durable: options.durable,
            overwrite,
        });
        self.expect_put_reply(&request)
    }

    /// `delete(key, context)`: writes a tombstone; returns its context.
    pub fn delete(
        &mut self,
        key: &[u8],
        context: &Context,
        options: RequestOptions,
    ) -> Result<Context, ClientError> {
        self.delete_full(key, context, options)
            .map(|result| result.context)
    }

    /// `delete`, with everything its reply says (see [`Client::put_full`]).
    pub fn delete_full(
        &mut self,
        key: &[u8],
        context: &Context,
        options: RequestOptions,
    ) -> Result<PutResult, ClientError> {
        let request = Message::Delete(DeleteRequest {
            key: Bytes::from(key.to_vec()),
            context: Bytes::from(context.0.clone()),
            w: options.w,
            timeout_ms: options.timeout_ms,
            forwarded: false,
            durable: options.durable,
        });
        self.expect_put_reply(&request)
    }

    /// What a put or delete reply says.
    fn expect_put_reply(&mut self, request: &Message) -> Result<PutResult, ClientError> {
        match self.call(request)? {
            Message::PutReply(reply) => Ok(PutResult {
                context: Context(reply.context.into_vec()),
                membership_version: reply.membership_version,
                durable_copies: reply.durable,
            }),
            other => Err(ClientError::UnexpectedReply(other.to_string())),
        }
    }

    /// This node's own stored versions of a key (no coordination; for operators and tests).
    pub fn get_local(&mut self, key: &[u8]) -> Result<VersionSet, ClientError> {
        match self.call(&Message::GetLocal(GetLocalRequest {
            key: Bytes::from(key.to_vec()),
        }))? {
            Message::LocalReply(reply) => Ok(reply.versions),
            other => Err(ClientError::UnexpectedReply(other.to_string())),
        }
    }

    /// The node's view of the membership and ring.
    pub fn ring(&mut self) -> Result<Membership, ClientError> {
        self.ring_and_replicas().map(|(membership, _)| membership)
    }

    /// The node's view of the membership and ring, and the cluster's N.
    pub fn ring_and_replicas(&mut self) -> Result<(Membership, usize), ClientError> {
        self.ring_reply()
            .map(|reply| (reply.membership, usize::from(reply.replicas)))
    }

    /// The node's whole answer to `Ring`: membership, N and its default request deadline.
    pub fn ring_reply(&mut self) -> Result<RingReply, ClientError> {
        match self.call(&Message::Ring)? {
            Message::RingReply(reply) => Ok(*reply),
            other => Err(ClientError::UnexpectedReply(other.to_string())),
        }
    }

    /// Waits at most `wait` for each reply, and for each send to make progress, from now on
    /// (the connect's timeout until then). Socket options only when it changes: the
    /// partition-aware client sets it per request.
    pub fn wait_for_replies(&mut self, wait: Duration) -> Result<(), ClientError> {
        if wait != self.timeout {
            self.stream.set_read_timeout(Some(wait))?;
            self.stream.set_write_timeout(Some(wait))?;
            self.timeout = wait;
        }
        Ok(())
    }

    /// Stages a membership change, shows the plan, or commits it (`admin join|leave|remove|
    /// plan|commit`).
    pub fn plan(&mut self, request: PlanRequest) -> Result<PlanReply, ClientError> {
        match self.call(&Message::Plan(Box::new(request)))? {
            Message::PlanReply(reply) => Ok(*reply),
            other => Err(ClientError::UnexpectedReply(other.to_string())),
        }
    }

    /// The node's members, their health as it sees them, and the hints it holds for each.
    pub fn members(&mut self) -> Result<MembersReply, ClientError> {
        match self.call(&Message::Members)? {
            Message::MembersReply(reply) => Ok(reply),
            other => Err(ClientError::UnexpectedReply(other.to_string())),
        }
    }

    /// The resource controller's state and the background rates, after `change`.
    pub fn throttle(&mut self, change: ThrottleChange) -> Result<ThrottleReply, ClientError> {
        match self.call(&Message::Throttle(ThrottleRequest { change }))? {
            Message::ThrottleReply(reply) => Ok(reply),
            other => Err(ClientError::UnexpectedReply(other.to_string())),
        }
    }

    /// The node's anti-entropy report: per partition it replicates, its tree and exchanges.
    pub fn aae(&mut self) -> Result<AaeReport, ClientError> {
        match self.call(&Message::Aae)? {
            Message::AaeReply(report) => Ok(*report),
            other => Err(ClientError::UnexpectedReply(other.to_string())),
        }
    }

    /// The node's per-stage statistics.
    pub fn stats(&mut self) -> Result<StatsReply, ClientError> {
        match self.call(&Message::Stats)? {
            Message::StatsReply(reply) => Ok(reply),
            other => Err(ClientError::UnexpectedReply(other.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: a connection the node reset or broke names the node and says what a request it
    /// left unanswered means; a timeout says it made no progress instead.
    #[test]
    fn a_reset_connection_names_the_node_and_what_an_unanswered_request_means() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let client = Client::connect(&addr, Duration::from_secs(5)).expect("connects");
        for kind in [
            io::ErrorKind::ConnectionReset,
            io::ErrorKind::ConnectionAborted,
            io::ErrorKind::BrokenPipe,
        ] {
            let said = client.io_error(io::Error::from(kind)).to_string();
            assert!(said.contains(&addr) && said.contains(UNANSWERED), "{said}");
        }
        let said = client
            .io_error(io::Error::from(io::ErrorKind::WouldBlock))
            .to_string();
        assert!(
            said.contains("no progress")
                && said.contains("may still be applied")
                && !said.contains(UNANSWERED),
            "{said}"
        );
    }

    /// Goal: a refused connect names the address and says the request was never sent (a
    /// stopped node's refusal read as the bare OS error).
    #[test]
    fn a_refused_connect_says_nothing_listens_and_the_request_was_not_sent() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        drop(listener);
        let said = match Client::connect(&addr, Duration::from_secs(5)) {
            Ok(_) => panic!("connected to {addr}, where nothing listens"),
            Err(e) => e.to_string(),
        };
        assert!(
            said.contains(&addr) && said.contains("nothing listens") && said.contains("not sent"),
            "{said}"
        );
    }
}
