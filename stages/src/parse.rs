//! The request parsing stage: frames → typed, validated requests.
//!
//! Check, then parse: the intake already bounded the frame's size; here the kind is checked
//! (unknown → `UnknownMessageType`), the body decoded exactly (trailing bytes are an error), and
//! the request validated against the node's limits (key and value sizes, context bound) before
//! anything reaches coordination. Every failure is answered with a typed error on the same
//! connection, which stays open: a bad request is the client's problem, not the stream's.
//!
//! `Stats` requests never reach this stage: the intake answers them itself, so an operator can
//! inspect a node whose pipeline is full.

use crate::error::ServiceError;
use crate::event::{
    AaeRequest, AntiEntropyEvent, ClientRequest, CoordinateEvent, Event, GossipEvent, GossipServe,
    HandoffEvent, IntakeEvent, Now, Origin, ParseEvent, ReplicateEvent, ServeRequest,
    TransferEvent,
};
use crate::membership::MembershipView;
use crate::seda::{Machine, Outbox};
use crate::versioning::VersionSet;
use crate::wire::{
    AaeObject, Bytes, ContextSeal, Message, RingReply, MAX_AAE_ITEMS, MAX_CONTEXT_ENTRIES,
};
use std::time::Duration;

/// Request limits enforced by parsing.
#[derive(Clone, Debug)]
pub struct ParseSettings {
    /// Longest key accepted.
    pub max_key_bytes: usize,
    /// Longest value accepted.
    pub max_value_bytes: usize,
    /// Checks that contexts were produced by this cluster.
    pub seal: ContextSeal,
    /// Most versions a peer may send for one key. Larger than the sibling limit a coordinator
    /// enforces, because concurrent coordinators may each add up to that limit.
    pub max_replica_versions: usize,
    /// The cluster's N, told to clients with the ring so they route by the right list length.
    pub replicas: usize,
    /// The default request deadline, told to clients with the ring (`RingReply`).
    pub request_timeout: Duration,
}

/// Where a valid request goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Routed {
    /// To quorum coordination.
    Client(ClientRequest),
    /// To the local store only.
    Serve(ServeRequest),
    /// To anti-entropy (a peer's exchange or purge).
    AntiEntropy(AaeRequest),
    /// A peer's gossip round or an operator's membership change, for the gossip stage.
    Gossip(GossipServe),
    /// An old replica's batch of a partition, for the transfer stage.
    Transfer {
        /// The partition.
        partition: u32,
        /// Its objects, validated.
        objects: Vec<(Vec<u8>, VersionSet)>,
    },
    /// A fallback's batch of hints meant for this node, for the handoff stage.
    Handoff {
        /// The hinted objects, validated.
        objects: Vec<(Vec<u8>, VersionSet)>,
    },
}

/// One parse worker's machine.
pub struct ParseMachine {
    settings: ParseSettings,
    /// Read (never written) to answer `Ring` requests.
    membership: MembershipView,
}

impl ParseMachine {
    /// A worker enforcing `settings`, answering `Ring` from `membership`.
    pub fn new(settings: ParseSettings, membership: MembershipView) -> ParseMachine {
        ParseMachine {
            settings,
            membership,
        }
    }

    fn handle(&self, event: ParseEvent, out: &mut Outbox) {
        let origin = Origin {
            conn: event.conn,
            request_id: event.frame.request_id,
        };
        let message = match Message::decode(&event.frame) {
            Ok(message) => message,
            Err(error) => return reply(out, origin, Message::Error(error.into())),
        };
        // On a connection this node opened, the peer only answers this node's requests.
        if let Some(peer) = event.peer {
            if !message.is_request() {
                out.reply(ReplicateEvent::Reply {
                    peer,
                    request_id: event.frame.request_id,
                    message,
                });
            }
            return;
        }
        let received_at = event.received_at;
        match message {
            Message::Ring => {
                let ring = RingReply {
                    membership: (*self.membership.current()).clone(),
                    replicas: u8::try_from(self.settings.replicas).unwrap_or(u8::MAX),
                    request_timeout_ms: self.settings.request_timeout.as_millis() as u64,
                };
                return reply(out, origin, Message::RingReply(Box::new(ring)));
            }
            Message::Ping if event.authenticated => return reply(out, origin, Message::Pong),
            Message::Members => {
                return out.request(CoordinateEvent::Members {
                    origin,
                    received_at,
                })
            }
            _ => {}
        }
        let message = match authorize(message, event.authenticated) {
            Ok(message) => message,
            Err(error) => return reply(out, origin, Message::Error(error)),
        };
        match validate(&self.settings, message) {
            Ok(Routed::Client(request)) => out.request(CoordinateEvent::Client {
                origin,
                request,
                received_at,
            }),
            Ok(Routed::Serve(request)) => out.request(CoordinateEvent::Serve {
                origin,
                request,
                received_at,
            }),
            Ok(Routed::AntiEntropy(request)) => {
                out.request(AntiEntropyEvent::Serve { origin, request })
            }
            Ok(Routed::Gossip(request)) => out.request(GossipEvent::Serve { origin, request }),
            Ok(Routed::Transfer { partition, objects }) => out.request(TransferEvent::Serve {
                origin,
                partition,
                objects,
            }),
            Ok(Routed::Handoff { objects }) => out.request(HandoffEvent::Serve { origin, objects }),
            Err(error) => reply(out, origin, Message::Error(error)),
        }
    }
}

/// Answers a request on its connection.
fn reply(out: &mut Outbox, origin: Origin, message: Message) {
    out.reply(IntakeEvent::reply(origin, &message));
}

impl Machine for ParseMachine {
    type Input = ParseEvent;

    fn on_event(&mut self, _now: Now, event: ParseEvent, out: &mut Outbox) {
        self.handle(event, out);
    }

    /// The coordinator's queue was full (or closed): the request is answered with why.
    fn on_refused(&mut self, _now: Now, event: Event, error: ServiceError, out: &mut Outbox) {
        let origin = match event {
            Event::Coordinate(
                CoordinateEvent::Client { origin, .. }
                | CoordinateEvent::Serve { origin, .. }
                | CoordinateEvent::Members { origin, .. },
            )
            | Event::AntiEntropy(AntiEntropyEvent::Serve { origin, .. })
            | Event::Gossip(GossipEvent::Serve { origin, .. })
            | Event::Transfer(TransferEvent::Serve { origin, .. })
            | Event::Handoff(HandoffEvent::Serve { origin, .. }) => origin,
            _ => return,
        };
        reply(out, origin, Message::Error(error));
    }
}

/// Turns a decoded message into a request the coordinator can act on, or the error that says
/// why not. Pure, so it is tested directly.
pub fn validate(settings: &ParseSettings, message: Message) -> Result<Routed, ServiceError> {
    let timeout = |ms: Option<u32>| ms.map(|ms| Duration::from_millis(u64::from(ms)));
    let request = match message {
        Message::Get(get) => {
            check_key(settings, &get.key)?;
            ClientRequest::Get {
                key: get.key.into_vec(),
                r: get.r.map(usize::from),
                timeout: timeout(get.timeout_ms),
            }
        }
        Message::Put(put) => {
            check_key(settings, &put.key)?;
            check_value(settings, put.value.len())?;
            let context = match &put.context {
                Some(bytes) => settings.seal.decode(&put.key, bytes)?,
                None => Default::default(),
            };
            ClientRequest::Put {
                key: put.key.into_vec(),
                context,
                value: Some(put.value.into_vec()),
                w: put.w.map(usize::from),
                timeout: timeout(put.timeout_ms),
                forwarded: put.forwarded,
                durable: put.durable,
                overwrite: put.overwrite,
            }
        }
        Message::Delete(delete) => {
            check_key(settings, &delete.key)?;
            let context = settings.seal.decode(&delete.key, &delete.context)?;
            if context.is_empty() {
                // A tombstone with an empty clock is concurrent with every version: it would
                // sit beside them as one more sibling and delete nothing, while the client
                // was told its delete succeeded.
                return Err(ServiceError::BadContext {
                    reason: "a delete needs the context of a get that saw the value; \
                             an empty context deletes nothing"
                        .into(),
                });
            }
            ClientRequest::Put {
                key: delete.key.into_vec(),
                context,
                value: None,
                w: delete.w.map(usize::from),
                timeout: timeout(delete.timeout_ms),
                forwarded: delete.forwarded,
                durable: delete.durable,
                overwrite: false,
            }
        }
        Message::GetLocal(local) => {
            check_key(settings, &local.key)?;
            return Ok(Routed::Serve(ServeRequest::Local {
                key: local.key.into_vec(),
            }));
        }
        Message::ReplicaRead(read) => {
            check_key(settings, &read.key)?;
            return Ok(Routed::Serve(ServeRequest::ReplicaRead {
                key: read.key.into_vec(),
            }));
        }
        Message::ReplicaWrite(write) => {
            check_key(settings, &write.key)?;
            let versions = check_versions(settings, write.versions)?;
            if write.hint.as_ref().is_some_and(|node| !node.is_valid()) {
                return Err(ServiceError::MalformedFrame {
                    reason: "hint names an invalid node".into(),
                });
            }
            let key = write.key.into_vec();
            return Ok(Routed::Serve(ServeRequest::ReplicaWrite {
                key,
                versions,
                hint: write.hint,
                durable: write.durable,
            }));
        }
        Message::Gossip(gossip) => {
            return Ok(Routed::Gossip(GossipServe::Gossip(gossip)));
        }
        Message::Plan(plan) => return Ok(Routed::Gossip(GossipServe::Plan(plan))),
        Message::TransferBatch(batch) => {
            check_items(batch.objects.len(), "objects")?;
            return Ok(Routed::Transfer {
                partition: batch.partition,
                objects: check_objects(settings, batch.objects)?,
            });
        }
        Message::HandoffBatch(batch) => {
            check_items(batch.objects.len(), "objects")?;
            return Ok(Routed::Handoff {
                objects: check_objects(settings, batch.objects)?,
            });
        }
        Message::AaeTree(tree) => {
            if let Some(branches) = &tree.branches {
                check_items(branches.len(), "branches")?;
            }
            return Ok(Routed::AntiEntropy(AaeRequest::Tree {
                partition: tree.partition,
                branches: tree.branches,
                root: tree.root,
            }));
        }
        Message::AaeDigests(digests) => {
            check_items(digests.segments.len(), "segments")?;
            return Ok(Routed::AntiEntropy(AaeRequest::Digests {
                partition: digests.partition,
                segments: digests.segments,
                // A peer may ask for fewer keys, never for more than one message carries.
                limit: (digests.limit as usize).clamp(1, MAX_AAE_ITEMS),
                after: digests.after.map(Bytes::into_vec),
            }));
        }
        Message::AaeSync(sync) => {
            check_items(
                sync.objects.len() + sync.want.len(),
                "objects and wanted keys",
            )?;
            let mut want = Vec::with_capacity(sync.want.len());
            for key in sync.want {
                check_key(settings, &key)?;
                want.push(key.into_vec());
            }
            return Ok(Routed::AntiEntropy(AaeRequest::Sync {
                partition: sync.partition,
                objects: check_objects(settings, sync.objects)?,
                want,
                from: sync.from,
            }));
        }
        Message::AaePurge(purge) => {
            check_items(purge.objects.len(), "objects")?;
            return Ok(Routed::AntiEntropy(AaeRequest::Purge {
                partition: purge.partition,
                phase: purge.phase,
                replica: purge.replica,
                objects: check_objects(settings, purge.objects)?,
            }));
        }
        other => return Err(ServiceError::NotARequest { kind: other.kind() }),
    };
    Ok(Routed::Client(request))
}

/// Peer-only requests need an authenticated connection; from anyone else, a put's
/// `forwarded` flag is ignored (it would let a client skip forwarding and put clock entries
/// from outside the preference list).
pub fn authorize(message: Message, authenticated: bool) -> Result<Message, ServiceError> {
    if authenticated {
        return Ok(message);
    }
    match message {
        Message::ReplicaRead(_)
        | Message::ReplicaWrite(_)
        | Message::Ping
        | Message::Gossip(_)
        | Message::TransferBatch(_)
        | Message::HandoffBatch(_)
        | Message::AaeTree(_)
        | Message::AaeDigests(_)
        | Message::AaeSync(_)
        | Message::AaePurge(_) => Err(ServiceError::Unauthorized {
            reason: format!(
                "{message} is for peers; this connection has not completed the peer handshake"
            ),
        }),
        Message::Put(mut put) => {
            put.forwarded = false;
            Ok(Message::Put(put))
        }
        Message::Delete(mut delete) => {
            delete.forwarded = false;
            Ok(Message::Delete(delete))
        }
        other => Ok(other),
    }
}

/// Bounds the items of one anti-entropy message (what a peer can make this node scan or
/// merge per message).
fn check_items(count: usize, what: &str) -> Result<(), ServiceError> {
    if count > MAX_AAE_ITEMS {
        return Err(ServiceError::MalformedFrame {
            reason: format!("{count} {what} exceed the anti-entropy maximum of {MAX_AAE_ITEMS}"),
        });
    }
    Ok(())
}

/// Checks each object of an anti-entropy message like a replica write's key and versions.
fn check_objects(
    settings: &ParseSettings,
    objects: Vec<AaeObject>,
) -> Result<Vec<(Vec<u8>, VersionSet)>, ServiceError> {
    objects
        .into_iter()
        .map(|object| {
            check_key(settings, &object.key)?;
            Ok((
                object.key.into_vec(),
                check_versions(settings, object.versions)?,
            ))
        })
        .collect()
}

fn check_value(settings: &ParseSettings, size: usize) -> Result<(), ServiceError> {
    if size > settings.max_value_bytes {
        return Err(ServiceError::ValueTooLarge {
            size: size as u64,
            max: settings.max_value_bytes as u64,
        });
    }
    Ok(())
}

/// Bounds a version set a peer sent (count, clock sizes, node names, value sizes) and
/// normalises it: the wire form is a plain list, which could be unsorted or hold superseded
/// versions, so it is rebuilt through reconciliation before it reaches storage.
fn check_versions(
    settings: &ParseSettings,
    versions: VersionSet,
) -> Result<VersionSet, ServiceError> {
    let malformed = |reason: String| ServiceError::MalformedFrame { reason };
    if versions.len() > settings.max_replica_versions {
        return Err(malformed(format!(
            "{} versions exceed the maximum of {}",
            versions.len(),
            settings.max_replica_versions
        )));
    }
    for version in versions.versions() {
        if version.past.len() > MAX_CONTEXT_ENTRIES {
            return Err(malformed(format!(
                "a version's clock has {} entries",
                version.past.len()
            )));
        }
        let nodes_valid = version.dot.node.is_valid_actor()
            && version
                .past
                .entries()
                .all(|(node, _)| node.is_valid_actor());
        if !nodes_valid {
            return Err(malformed("a version names an invalid node".into()));
        }
        check_value(settings, version.value.as_ref().map_or(0, Vec::len))?;
    }
    Ok(VersionSet::from_versions(versions.versions().to_vec()))
}

fn check_key(settings: &ParseSettings, key: &[u8]) -> Result<(), ServiceError> {
    if key.is_empty() || key.len() > settings.max_key_bytes {
        return Err(ServiceError::InvalidKey {
            size: key.len() as u64,
            max: settings.max_key_bytes as u64,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod authorize_tests;
