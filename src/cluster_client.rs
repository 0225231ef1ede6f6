//! A partition-aware client (Dynamo §6.4, client-driven coordination): it fetches the ring from
//! any node it knows, and sends each request straight to a node of the key's preference list,
//! skipping the forwarding hop a load balancer would cost.
//!
//! - Routing: the first reachable node of the key's preference list, then the rest of the
//!   list, then the fallbacks; a node that fails to connect or answer is skipped for
//!   `DOWN_FOR` before it is tried first again.
//! - Refresh: every get and put reply carries the answering node's membership version; a
//!   newer one than the client's makes it fetch the ring again.
//! - Errors the store returns (quorum, overload, bad input) are returned as they are: the node
//!   that coordinated already did what retrying elsewhere would do. A stopping node's
//!   `ShuttingDown` is the exception: it refused the request untouched, so the next node is
//!   tried, as for a connection that failed.

use crate::client::{Client, ClientError, Context, GetResult, RequestOptions};
use shoal_stages::error::ServiceError;
use shoal_stages::membership::{Membership, MembershipView};
use shoal_stages::NodeId;
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a node that failed is tried only after the others.
const DOWN_FOR: Duration = Duration::from_secs(2);

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
    connections: HashMap<NodeId, Client>,
    down_until: HashMap<NodeId, Instant>,
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
        let (membership, reported) = fetch_ring(seeds, timeout)?;
        Ok(ClusterClient {
            seeds: seeds.to_vec(),
            membership: MembershipView::new(membership),
            n: n.unwrap_or(reported).max(1),
            cluster_n: reported,
            timeout,
            connections: HashMap::new(),
            down_until: HashMap::new(),
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
        let result = self.with_node(key, |client| client.get(key, options))?;
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
        let result = self.with_node(key, |client| client.put_full(key, context, value, options))?;
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
        self.with_node(key, |client| client.delete(key, context, options))
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

    /// The nodes to try for a key, in order: preference list, then fallbacks; nodes marked
    /// down go last.
    fn candidates(&self, key: &[u8]) -> Vec<NodeId> {
        // While the key's partition moves, its old replicas still coordinate reads.
        let list = self.membership.replicas_for_key(key, self.n).list;
        let now = Instant::now();
        let (mut up, down): (Vec<NodeId>, Vec<NodeId>) = list
            .primaries
            .into_iter()
            .chain(list.fallbacks)
            .partition(|node| self.down_until.get(node).is_none_or(|until| *until <= now));
        up.extend(down);
        up
    }

    /// Runs `call` on the first candidate node that answers; connection failures move on.
    fn with_node<T>(
        &mut self,
        key: &[u8],
        mut call: impl FnMut(&mut Client) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        let mut last_error = ClientError::Usage("the ring has no nodes".into());
        for node in self.candidates(key) {
            let client = match self.connection(&node) {
                Ok(client) => client,
                Err(error) => {
                    // The connect's own error ("cannot connect to ADDR: refused"), not a usage
                    // error: callers count and report it as the I/O failure it is.
                    last_error = error;
                    continue;
                }
            };
            match call(client) {
                Ok(value) => return Ok(value),
                Err(
                    error @ (ClientError::Io(_)
                    | ClientError::Closed { .. }
                    | ClientError::Frame { .. }),
                ) => {
                    self.mark_down(&node);
                    last_error = error;
                }
                Err(error @ ClientError::Service(ServiceError::ShuttingDown)) => {
                    // The node is stopping and refused the request before doing anything with
                    // it: the next node may take it.
                    self.mark_down(&node);
                    last_error = error;
                }
                Err(error) if error.breaks_connection() => {
                    // The node answered (a refused frame, a stream out of step): it is up,
                    // the connection is unusable. The next request reconnects; another node
                    // would answer this one the same.
                    self.connections.remove(&node);
                    return Err(error);
                }
                Err(other) => return Err(other),
            }
        }
        Err(last_error)
    }

    fn connection(&mut self, node: &NodeId) -> Result<&mut Client, ClientError> {
        let vacant = match self.connections.entry(node.clone()) {
            Entry::Occupied(open) => return Ok(open.into_mut()),
            Entry::Vacant(vacant) => vacant,
        };
        let addr = self
            .membership
            .current()
            .addr_of(node)
            .ok_or_else(|| ClientError::Usage(format!("{node} is not in the ring")))?;
        match Client::connect(&addr.to_string(), self.timeout) {
            Ok(client) => Ok(vacant.insert(client)),
            Err(error) => {
                // `mark_down`, but no connection to drop (and `self` is still lent out).
                self.down_until
                    .insert(node.clone(), Instant::now() + DOWN_FOR);
                Err(error)
            }
        }
    }

    fn mark_down(&mut self, node: &NodeId) {
        self.connections.remove(node);
        self.down_until
            .insert(node.clone(), Instant::now() + DOWN_FOR);
    }

    fn refresh_if_newer(&mut self, version: u64) {
        let membership = self.membership.current();
        if version > membership.version {
            let mut sources: Vec<String> =
                membership.members().map(|m| m.addr.to_string()).collect();
            sources.extend(self.seeds.iter().cloned());
            if let Ok((membership, _)) = fetch_ring(&sources, self.timeout) {
                self.membership.set(membership);
            }
        }
    }
}

/// The ring, and the cluster's N, of the first node in `sources` that answers.
fn fetch_ring(sources: &[String], timeout: Duration) -> Result<(Membership, usize), ClientError> {
    let mut last_error = ClientError::Usage("no seed nodes given".into());
    for addr in sources {
        match Client::connect(addr, timeout).and_then(|mut client| client.ring_and_replicas()) {
            Ok(ring) => return Ok(ring),
            Err(error) => last_error = error,
        }
    }
    Err(last_error)
}
