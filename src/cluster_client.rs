//! A partition-aware client (Dynamo §6.4, client-driven coordination): it fetches the ring from
//! any node it knows, and sends each request straight to a node of the key's preference list,
//! skipping the forwarding hop a load balancer would cost.
//!
//! - Routing: the first reachable node of the key's preference list, then the rest of the
//!   list, then the fallbacks; a node that fails to connect or answer is tried only after the
//!   others for `DOWN_FOR`, twice that after its next failure, and so on up to `DOWN_MAX`,
//!   until it answers again.
//! - Waiting: a node answers every request by its deadline (the request's `timeout_ms`, or
//!   the cluster's `request_timeout_ms`, which the ring tells), so the client waits for a
//!   reply that long plus `REPLY_MARGIN`, not its whole timeout: a stalled node (paused,
//!   swapping, a disk hang) costs a request seconds, not the client's 10.
//! - Refresh: every get and put reply carries the answering node's membership version; a
//!   newer one than the client's makes it fetch the ring again.
//! - Errors the store returns (quorum, overload, bad input) are returned as they are: the node
//!   that coordinated already did what retrying elsewhere would do. A stopping node's
//!   `ShuttingDown` is the exception, and so is a node every peer refuses (`CutOff`): it
//!   refused the request untouched, so the next node is tried, as for a connection that
//!   failed.

use crate::client::{Client, ClientError, Context, GetResult, RequestOptions};
use shoal_stages::error::ServiceError;
use shoal_stages::membership::{Membership, MembershipView};
use shoal_stages::wire::RingReply;
use shoal_stages::NodeId;
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod health;
use health::Gone;
pub use health::NodeHealth;

/// How long past a request's deadline a reply is still waited for: the node's reply on the
/// way, or a deadline counted from a read the node made a little after the send.
const REPLY_MARGIN: Duration = Duration::from_secs(1);

/// A client for a whole cluster.
pub struct ClusterClient {
    seeds: Vec<String>,
    /// The ring routed by, with each partition's replicas remembered until a refresh (a
    /// request's preference list is then a lookup, not a ring walk).
    membership: MembershipView,
    n: usize,
    /// The N the cluster reported with its ring (`n` may be the caller's override).
    cluster_n: usize,
    timeout: Duration,
    /// The cluster's default request timeout (`request_timeout_ms`), as the ring told it
    /// (None: not told). A node's own config sets it: the last ring fetched speaks for all.
    request_timeout: Option<Duration>,
    /// Open connections, each with the health epoch it was last found good at: one opened
    /// before its node's latest failure (seen by any client sharing the health) is dialled
    /// again before use.
    connections: HashMap<NodeId, (Client, u64)>,
    /// The nodes that failed lately (shared by the load tool's workers: `share_health`).
    health: NodeHealth,
}

impl ClusterClient {
    /// Connects to the first seed that answers and fetches its ring. `n` is the cluster's
    /// replication factor (the preference list length to route by).
    pub fn connect(
        seeds: &[String],
        n: usize,
        timeout: Duration,
    ) -> Result<ClusterClient, ClientError> {
        ClusterClient::connect_with(seeds, Some(n), timeout)
    }

    /// [`ClusterClient::connect`], with N as the cluster reports it with its ring when `n` is
    /// `None`.
    pub fn connect_with(
        seeds: &[String],
        n: Option<usize>,
        timeout: Duration,
    ) -> Result<ClusterClient, ClientError> {
        let ring = fetch_ring(seeds, timeout)?;
        let reported = usize::from(ring.replicas);
        let request_timeout = ring_request_timeout(&ring);
        Ok(ClusterClient {
            seeds: seeds.to_vec(),
            membership: MembershipView::new(ring.membership),
            n: n.unwrap_or(reported).max(1),
            cluster_n: reported,
            timeout,
            request_timeout,
            connections: HashMap::new(),
            health: NodeHealth::default(),
        })
    }

    /// The N the client routes by (preference lists of this many nodes).
    pub fn replicas(&self) -> usize {
        self.n
    }

    /// The cluster's N as its ring reported it, whatever N the client routes by.
    pub fn cluster_replicas(&self) -> usize {
        self.cluster_n
    }

    /// The membership the client routes by.
    pub fn membership(&self) -> Arc<Membership> {
        self.membership.current()
    }

    /// `get(key)` through a preference-list node.
    pub fn get(&mut self, key: &[u8], options: RequestOptions) -> Result<GetResult, ClientError> {
        let result = self.with_node(key, options, Retry::Any, |client| client.get(key, options))?;
        self.refresh_if_newer(result.membership_version);
        Ok(result)
    }

    /// `put(key, context, value)` through a preference-list node.
    pub fn put(
        &mut self,
        key: &[u8],
        context: Option<&Context>,
        value: &[u8],
        options: RequestOptions,
    ) -> Result<Context, ClientError> {
        let result = self.with_node(key, options, Retry::Unsent, |client| {
            client.put_full(key, context, value, options)
        })?;
        self.refresh_if_newer(result.membership_version);
        Ok(result.context)
    }

    /// `delete(key, context)` through a preference-list node.
    pub fn delete(
        &mut self,
        key: &[u8],
        context: &Context,
        options: RequestOptions,
    ) -> Result<Context, ClientError> {
        self.with_node(key, options, Retry::Unsent, |client| {
            client.delete(key, context, options)
        })
    }

    /// Opens a connection to every member now rather than at each one's first request (a
    /// load run's clock should not include the dialling). A member that cannot be reached is
    /// marked down, as a failed request would.
    pub fn dial_all(&mut self) {
        let membership = self.membership.current();
        let members: Vec<NodeId> = membership.members().map(|m| m.id.clone()).collect();
        for node in members {
            let _ = self.connection(&node);
        }
    }

    /// Shares `health` (which nodes failed lately) with the other clients holding it: once a
    /// failed node's wait is over, one of their requests tries it, not each client's.
    pub fn share_health(&mut self, health: NodeHealth) {
        self.health = health;
    }

    /// The nodes to try for a key, in order: preference list, then fallbacks; nodes marked
    /// down go last (`probe`: how long this request may wait for one whose wait is over).
    fn candidates(&self, key: &[u8], probe: Duration) -> Vec<NodeId> {
        // While the key's partition moves, its old replicas still coordinate reads.
        let list = self.membership.replicas_for_key(key, self.n).list;
        let now = Instant::now();
        let (mut up, down): (Vec<NodeId>, Vec<NodeId>) = list
            .primaries
            .into_iter()
            .chain(list.fallbacks)
            .partition(|node| self.health.may_try(node, now, probe));
        up.extend(down);
        up
    }

    /// Runs `call` on the first candidate node that answers; connection failures move on, and
    /// a node that did not answer in time moves on only for a request `retry` allows.
    fn with_node<T>(
        &mut self,
        key: &[u8],
        options: RequestOptions,
        retry: Retry,
        mut call: impl FnMut(&mut Client) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        let mut last_error = ClientError::Usage("the ring has no nodes".into());
        let wait = reply_wait(options, self.request_timeout, self.timeout);
        for node in self.candidates(key, wait) {
            let client = match self.connection(&node) {
                Ok(client) => client,
                Err(error) => {
                    // The connect's own error ("cannot connect to ADDR: refused"), not a usage
                    // error: callers count and report it as the I/O failure it is.
                    last_error = error;
                    continue;
                }
            };
            let answer = client.wait_for_replies(wait).and_then(|()| call(client));
            match answer {
                Ok(value) => {
                    self.health.answered(&node);
                    return Ok(value);
                }
                Err(ClientError::Io(error))
                    if retry == Retry::Unsent
                        && matches!(
                            error.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                {
                    // A stalled node holds the put (it applies it when it goes on): sent
                    // again elsewhere it would be applied twice, under two dots, and the
                    // client would see a sibling it never wrote. Its outcome is unknown.
                    self.mark_down(&node, Gone::No);
                    return Err(ClientError::Io(error));
                }
                Err(
                    error @ (ClientError::Io(_)
                    | ClientError::Closed { .. }
                    | ClientError::Frame { .. }),
                ) => {
                    self.mark_down(&node, gone(&error));
                    last_error = error;
                }
                Err(
                    error @ ClientError::Service(
                        ServiceError::ShuttingDown | ServiceError::CutOff { .. },
                    ),
                ) => {
                    // The node is stopping, or every peer refuses it, and it refused the
                    // request before doing anything with it: the next node may take it.
                    self.mark_down(&node, gone(&error));
                    last_error = error;
                }
                Err(error) if error.breaks_connection() => {
                    // The node answered (a refused frame, a stream out of step): it is up,
                    // the connection is unusable. The next request reconnects; another node
                    // would answer this one the same.
                    self.health.answered(&node);
                    self.connections.remove(&node);
                    return Err(error);
                }
                Err(other) => {
                    self.health.answered(&node);
                    return Err(other);
                }
            }
        }
        Err(last_error)
    }

    /// The connection to `node`, dialled if there is none or if the one there was opened
    /// before the node's latest failure. Why: the load tool's workers share which nodes
    /// failed, and after a node's restart each worker's old connection failed once when tried,
    /// each failure holding the node off longer (2 s doubled up to 16 s): a trial's 8 workers
    /// left a restarted node without requests for 110 s.
    fn connection(&mut self, node: &NodeId) -> Result<&mut Client, ClientError> {
        let epoch = self.health.epoch();
        if let Some((_, checked)) = self.connections.get(node) {
            if *checked != epoch && self.health.failed_since(node, *checked) {
                self.connections.remove(node);
            }
        }
        let vacant = match self.connections.entry(node.clone()) {
            Entry::Occupied(open) => {
                let (client, checked) = open.into_mut();
                *checked = epoch;
                return Ok(client);
            }
            Entry::Vacant(vacant) => vacant,
        };
        let addr = self
            .membership
            .current()
            .addr_of(node)
            .ok_or_else(|| ClientError::Usage(format!("{node} is not in the ring")))?;
        match Client::connect(&addr.to_string(), self.timeout) {
            Ok(client) => Ok(&mut vacant.insert((client, epoch)).0),
            Err(error) => {
                // `mark_down`, but no connection to drop (and `self` is still lent out).
                self.health.failed(node, Instant::now(), Gone::Yes);
                Err(error)
            }
        }
    }

    fn mark_down(&mut self, node: &NodeId, gone: Gone) {
        self.connections.remove(node);
        self.health.failed(node, Instant::now(), gone);
    }

    fn refresh_if_newer(&mut self, version: u64) {
        let membership = self.membership.current();
        if version > membership.version {
            let mut sources: Vec<String> =
                membership.members().map(|m| m.addr.to_string()).collect();
            sources.extend(self.seeds.iter().cloned());
            if let Ok(ring) = fetch_ring(&sources, self.timeout) {
                self.request_timeout = ring_request_timeout(&ring).or(self.request_timeout);
                self.membership.set(ring.membership);
            }
        }
    }
}

/// Whether a failure says the node's process is gone (it stopped, restarted, or nothing
/// listens): every connection opened to it before is then dead. A stall or a refusal says
/// its connections still work, and redialling them would only add work to a struggling node.
fn gone(error: &ClientError) -> Gone {
    match error {
        ClientError::Closed { .. } | ClientError::Service(ServiceError::ShuttingDown) => Gone::Yes,
        ClientError::Io(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof
            ) =>
        {
            Gone::Yes
        }
        _ => Gone::No,
    }
}

/// Which requests go to the next node after one that did not answer in time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Retry {
    /// A get: asking another node changes nothing.
    Any,
    /// A put or delete: only one that was never sent (no connection, or refused untouched).
    Unsent,
}

/// How long to wait for a node's reply to a request with `options` (see the module doc):
/// its deadline (the request's `timeout_ms`, else the cluster's `request_timeout`) plus
/// `REPLY_MARGIN`, at most the client's `timeout`, which alone counts when neither is known.
fn reply_wait(
    options: RequestOptions,
    request_timeout: Option<Duration>,
    timeout: Duration,
) -> Duration {
    let deadline = options
        .timeout_ms
        .map(|ms| Duration::from_millis(u64::from(ms)))
        .or(request_timeout);
    deadline.map_or(timeout, |d| (d + REPLY_MARGIN).min(timeout))
}

/// The default request timeout a ring reply told, if it told one (0: an older node).
fn ring_request_timeout(ring: &RingReply) -> Option<Duration> {
    (ring.request_timeout_ms > 0).then(|| Duration::from_millis(ring.request_timeout_ms))
}

/// The ring reply (membership, N, default deadline) of the first node in `sources` that
/// answers.
fn fetch_ring(sources: &[String], timeout: Duration) -> Result<RingReply, ClientError> {
    let mut last_error = ClientError::Usage("no seed nodes given".into());
    for addr in sources {
        match Client::connect(addr, timeout).and_then(|mut client| client.ring_reply()) {
            Ok(ring) => return Ok(ring),
            Err(error) => last_error = error,
        }
    }
    Err(last_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: a reply is waited for the request's deadline plus the margin: its own timeout_ms
    /// first, else the cluster's request timeout, never past the client's timeout, and the
    /// client's timeout alone when neither is known (an older node's ring).
    #[test]
    fn a_reply_is_waited_for_the_deadline_plus_the_margin_within_the_client_timeout() {
        let secs = Duration::from_secs;
        let client = secs(10);
        let own = RequestOptions {
            timeout_ms: Some(500),
            ..RequestOptions::default()
        };
        let defaults = RequestOptions::default();
        assert_eq!(reply_wait(defaults, Some(secs(2)), client), secs(3));
        assert_eq!(
            reply_wait(own, Some(secs(2)), client),
            Duration::from_millis(1500)
        );
        assert_eq!(reply_wait(defaults, Some(secs(30)), client), client);
        assert_eq!(reply_wait(defaults, None, client), client);
    }
}
