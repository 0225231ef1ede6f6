//! The `Message` enum over every typed message of the protocol (the structs are in
//! `requests.rs`, `handshake.rs`, `admin.rs`, `aae.rs` and `gossip.rs`), and its encoding as
//! frames.
//!
//! Each message type has a fixed `kind` number in the frame header and a MessagePack body.
//! Decoding checks the kind first (unknown → [`WireError::UnknownMessageType`]), then decodes the
//! body and rejects trailing bytes, so a frame is either exactly one known message or an error.

use super::aae::{
    AaeDigests, AaeDigestsReply, AaePurge, AaePurgeReply, AaeReport, AaeSync, AaeSyncReply,
    AaeTree, AaeTreeReply,
};
use super::admin::{
    AuthRequest, MembersReply, RingReply, StatsReply, ThrottleReply, ThrottleRequest,
};
use super::frame::{finish_frame, start_frame, Frame, FRAME_OVERHEAD_BYTES, LENGTH_BYTES};
use super::gossip::{
    GossipReply, GossipRequest, PlanReply, PlanRequest, TransferAck, TransferBatch,
};
use super::handshake::{PeerChallenge, PeerHello, PeerProof};
use super::requests::{
    DeleteRequest, GetLocalRequest, GetReply, GetRequest, HandoffAck, HandoffBatch, LocalReply,
    PutReply, PutRequest, ReplicaRead, ReplicaReply, ReplicaWrite,
};
use crate::error::ServiceError;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt;
use std::io::Cursor;

/// Largest body a frame can carry: its length field is a u32 that also counts the header.
const MAX_BODY_BYTES: usize = u32::MAX as usize - FRAME_OVERHEAD_BYTES;

/// Spare capacity past which a freshly encoded frame is shrunk to its length.
const SHRINK_ABOVE_BYTES: usize = 4096;

/// Room reserved for a body before it is serialized: a get or put of a small value and its
/// context fits, so the hot frames are written without growing the buffer.
const FRAME_BODY_GUESS: usize = 256;

/// Bytes, encoded as a MessagePack `bin` (not an array of integers).
pub type Bytes = serde_bytes::ByteBuf;

/// Every message of the protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// Client → node.
    Get(GetRequest),
    /// Client → node.
    Put(PutRequest),
    /// Client → node.
    Delete(DeleteRequest),
    /// Admin → node: per-stage statistics.
    Stats,
    /// Admin → node: one replica's stored versions.
    GetLocal(GetLocalRequest),
    /// Client → node: the membership and ring, for partition-aware routing.
    Ring,
    /// Node → node.
    ReplicaRead(ReplicaRead),
    /// Node → node.
    ReplicaWrite(ReplicaWrite),
    /// Node → node: are you there? (failure detector probe)
    Ping,
    /// Node → node: the first frame on a peer link (handshake step 1).
    PeerHello(PeerHello),
    /// The receiver's answer to a hello (handshake step 2).
    PeerChallenge(PeerChallenge),
    /// The dialer's proof of the cluster secret (handshake step 3).
    PeerProof(PeerProof),
    /// Admin → node: members, their health and hints held for them.
    Members,
    /// Admin → node: the resource controller and background rates (and a change to them).
    Throttle(ThrottleRequest),
    /// Admin → node: anti-entropy's trees and exchanges.
    Aae,
    /// Node → admin (boxed: one row per partition).
    AaeReply(Box<AaeReport>),
    /// Admin → node: stage a membership change, show the plan, or commit it.
    Plan(Box<PlanRequest>),
    /// Node → admin.
    PlanReply(Box<PlanReply>),
    /// Node → node: a gossip round (boxed: it may carry the whole membership).
    Gossip(Box<GossipRequest>),
    /// Node → node.
    GossipReply(Box<GossipReply>),
    /// Node → node: a batch of a partition handed to its new replica.
    TransferBatch(TransferBatch),
    /// Node → node.
    TransferAck(TransferAck),
    /// Node → node: hints delivered to the node they were meant for.
    HandoffBatch(HandoffBatch),
    /// Node → node.
    HandoffAck(HandoffAck),
    /// Node → node: a level of a partition's Merkle tree.
    AaeTree(AaeTree),
    /// Node → node.
    AaeTreeReply(AaeTreeReply),
    /// Node → node: the keys of differing segments.
    AaeDigests(AaeDigests),
    /// Node → node.
    AaeDigestsReply(AaeDigestsReply),
    /// Node → node: merge these, send me those.
    AaeSync(AaeSync),
    /// Node → node.
    AaeSyncReply(AaeSyncReply),
    /// Node → node: a tombstone purge's check or commit.
    AaePurge(AaePurge),
    /// Node → node.
    AaePurgeReply(AaePurgeReply),
    /// Node → admin.
    ThrottleReply(ThrottleReply),
    /// Node → client.
    GetReply(GetReply),
    /// Node → client (put and delete).
    PutReply(PutReply),
    /// Node → admin.
    StatsReply(StatsReply),
    /// Node → admin.
    LocalReply(LocalReply),
    /// Node → client (boxed: the membership carries two rings while partitions move).
    RingReply(Box<RingReply>),
    /// Node → node.
    ReplicaReply(ReplicaReply),
    /// Node → node: answer to `Ping`.
    Pong,
    /// Node → node, on every connection with a peer, as a clean stop ends: this node has
    /// answered what it took and is closing. The peer marks it down at once ("it stopped")
    /// and takes the connections' close as planned. No answer.
    Stopping,
    /// Node → admin.
    MembersReply(MembersReply),
    /// Client → node: the `[security] client_token`, the first frame of a client connection
    /// when the node requires one.
    Auth(AuthRequest),
    /// Node → client: the token was right; the connection may send requests.
    AuthOk,
    /// Node → client: why the request failed.
    Error(ServiceError),
}

/// The kind numbers of the frame header. Requests are below 100, replies 100..200; 200.. is
/// reserved for node-to-node messages. Numbers are never reused.
pub mod kind {
    /// [`super::Message::Get`]
    pub const GET: u16 = 1;
    /// [`super::Message::Put`]
    pub const PUT: u16 = 2;
    /// [`super::Message::Delete`]
    pub const DELETE: u16 = 3;
    /// [`super::Message::GetLocal`]
    pub const GET_LOCAL: u16 = 4;
    /// [`super::Message::Stats`]
    pub const STATS: u16 = 10;
    /// [`super::Message::Ring`]
    pub const RING: u16 = 11;
    /// [`super::Message::Auth`]
    pub const AUTH: u16 = 16;
    /// [`super::Message::AuthOk`]
    pub const AUTH_OK: u16 = 116;
    /// [`super::Message::LocalReply`]
    pub const LOCAL_REPLY: u16 = 104;
    /// [`super::Message::RingReply`]
    pub const RING_REPLY: u16 = 111;
    /// [`super::Message::ReplicaRead`]
    pub const REPLICA_READ: u16 = 200;
    /// [`super::Message::ReplicaWrite`]
    pub const REPLICA_WRITE: u16 = 201;
    /// [`super::Message::ReplicaReply`]
    pub const REPLICA_REPLY: u16 = 250;
    /// [`super::Message::Ping`]
    pub const PING: u16 = 202;
    /// [`super::Message::PeerHello`]
    pub const PEER_HELLO: u16 = 203;
    /// [`super::Message::PeerChallenge`]
    pub const PEER_CHALLENGE: u16 = 253;
    /// [`super::Message::PeerProof`]
    pub const PEER_PROOF: u16 = 210;
    /// [`super::Message::Pong`]
    pub const PONG: u16 = 252;
    /// [`super::Message::Members`]
    pub const MEMBERS: u16 = 12;
    /// [`super::Message::MembersReply`]
    pub const MEMBERS_REPLY: u16 = 112;
    /// [`super::Message::Throttle`]
    pub const THROTTLE: u16 = 13;
    /// [`super::Message::ThrottleReply`]
    pub const THROTTLE_REPLY: u16 = 113;
    /// [`super::Message::Aae`]
    pub const AAE: u16 = 14;
    /// [`super::Message::AaeReply`]
    pub const AAE_REPLY: u16 = 114;
    /// [`super::Message::Plan`]
    pub const PLAN: u16 = 15;
    /// [`super::Message::PlanReply`]
    pub const PLAN_REPLY: u16 = 115;
    /// [`super::Message::Gossip`]
    pub const GOSSIP: u16 = 208;
    /// [`super::Message::GossipReply`]
    pub const GOSSIP_REPLY: u16 = 258;
    /// [`super::Message::TransferBatch`]
    pub const TRANSFER_BATCH: u16 = 209;
    /// [`super::Message::TransferAck`]
    pub const TRANSFER_ACK: u16 = 259;
    /// [`super::Message::HandoffBatch`]
    pub const HANDOFF_BATCH: u16 = 211;
    /// [`super::Message::Stopping`]
    pub const PEER_STOPPING: u16 = 212;
    /// [`super::Message::HandoffAck`]
    pub const HANDOFF_ACK: u16 = 261;
    /// [`super::Message::AaeTree`]
    pub const AAE_TREE: u16 = 204;
    /// [`super::Message::AaeDigests`]
    pub const AAE_DIGESTS: u16 = 205;
    /// [`super::Message::AaeSync`]
    pub const AAE_SYNC: u16 = 206;
    /// [`super::Message::AaePurge`]
    pub const AAE_PURGE: u16 = 207;
    /// [`super::Message::AaeTreeReply`]
    pub const AAE_TREE_REPLY: u16 = 254;
    /// [`super::Message::AaeDigestsReply`]
    pub const AAE_DIGESTS_REPLY: u16 = 255;
    /// [`super::Message::AaeSyncReply`]
    pub const AAE_SYNC_REPLY: u16 = 256;
    /// [`super::Message::AaePurgeReply`]
    pub const AAE_PURGE_REPLY: u16 = 257;
    /// [`super::Message::GetReply`]
    pub const GET_REPLY: u16 = 101;
    /// [`super::Message::PutReply`]
    pub const PUT_REPLY: u16 = 102;
    /// [`super::Message::StatsReply`]
    pub const STATS_REPLY: u16 = 110;
    /// [`super::Message::Error`]
    pub const ERROR: u16 = 199;
}

/// Why a frame is not a message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The kind number is not one of [`kind`].
    #[error("unknown message type {kind}")]
    UnknownMessageType {
        /// The kind found.
        kind: u16,
    },
    /// The body does not decode as the kind's message.
    #[error("malformed body of message type {kind}: {reason}")]
    Malformed {
        /// The kind found.
        kind: u16,
        /// The decoder's complaint.
        reason: String,
    },
    /// The body decoded but bytes were left over.
    #[error("message type {kind} has {extra} trailing bytes")]
    TrailingBytes {
        /// The kind found.
        kind: u16,
        /// Bytes after the message.
        extra: usize,
    },
    /// A message failed to encode (a bug; encoding our own types cannot fail otherwise).
    #[error("cannot encode message: {reason}")]
    Encode {
        /// The encoder's complaint.
        reason: String,
    },
}

impl From<WireError> for ServiceError {
    fn from(error: WireError) -> ServiceError {
        match error {
            WireError::UnknownMessageType { kind } => ServiceError::UnknownMessageType { kind },
            other => ServiceError::MalformedFrame {
                reason: other.to_string(),
            },
        }
    }
}

impl Message {
    /// The kind number this message travels under.
    pub fn kind(&self) -> u16 {
        match self {
            Message::Get(_) => kind::GET,
            Message::Put(_) => kind::PUT,
            Message::Delete(_) => kind::DELETE,
            Message::Stats => kind::STATS,
            Message::GetLocal(_) => kind::GET_LOCAL,
            Message::Ring => kind::RING,
            Message::Auth(_) => kind::AUTH,
            Message::AuthOk => kind::AUTH_OK,
            Message::ReplicaRead(_) => kind::REPLICA_READ,
            Message::ReplicaWrite(_) => kind::REPLICA_WRITE,
            Message::LocalReply(_) => kind::LOCAL_REPLY,
            Message::RingReply(_) => kind::RING_REPLY,
            Message::ReplicaReply(_) => kind::REPLICA_REPLY,
            Message::Ping => kind::PING,
            Message::PeerHello(_) => kind::PEER_HELLO,
            Message::PeerChallenge(_) => kind::PEER_CHALLENGE,
            Message::PeerProof(_) => kind::PEER_PROOF,
            Message::Pong => kind::PONG,
            Message::Stopping => kind::PEER_STOPPING,
            Message::Members => kind::MEMBERS,
            Message::MembersReply(_) => kind::MEMBERS_REPLY,
            Message::Throttle(_) => kind::THROTTLE,
            Message::ThrottleReply(_) => kind::THROTTLE_REPLY,
            Message::GetReply(_) => kind::GET_REPLY,
            Message::PutReply(_) => kind::PUT_REPLY,
            Message::Aae => kind::AAE,
            Message::AaeReply(_) => kind::AAE_REPLY,
            Message::Plan(_) => kind::PLAN,
            Message::PlanReply(_) => kind::PLAN_REPLY,
            Message::Gossip(_) => kind::GOSSIP,
            Message::GossipReply(_) => kind::GOSSIP_REPLY,
            Message::TransferBatch(_) => kind::TRANSFER_BATCH,
            Message::TransferAck(_) => kind::TRANSFER_ACK,
            Message::HandoffBatch(_) => kind::HANDOFF_BATCH,
            Message::HandoffAck(_) => kind::HANDOFF_ACK,
            Message::AaeTree(_) => kind::AAE_TREE,
            Message::AaeTreeReply(_) => kind::AAE_TREE_REPLY,
            Message::AaeDigests(_) => kind::AAE_DIGESTS,
            Message::AaeDigestsReply(_) => kind::AAE_DIGESTS_REPLY,
            Message::AaeSync(_) => kind::AAE_SYNC,
            Message::AaeSyncReply(_) => kind::AAE_SYNC_REPLY,
            Message::AaePurge(_) => kind::AAE_PURGE,
            Message::AaePurgeReply(_) => kind::AAE_PURGE_REPLY,
            Message::StatsReply(_) => kind::STATS_REPLY,
            Message::Error(_) => kind::ERROR,
        }
    }

    /// Appends this message as a complete frame to `out`: the body is serialized in place
    /// behind the header, whose length is filled in after (no body buffer of its own: it was
    /// one allocation and a copy per frame, grown from empty). On an error `out` is as it was.
    pub fn encode_into(&self, request_id: u64, out: &mut Vec<u8>) -> Result<(), WireError> {
        out.reserve(LENGTH_BYTES + FRAME_OVERHEAD_BYTES + FRAME_BODY_GUESS);
        let start = start_frame(self.kind(), request_id, out);
        let finished = self.write_body(out).and_then(|()| {
            finish_frame(out, start).map_err(|body| WireError::Encode {
                reason: format!("{body} bytes exceed the frame format's {MAX_BODY_BYTES}"),
            })
        });
        if finished.is_err() {
            out.truncate(start);
        }
        finished
    }

    /// Appends this message's body (named fields) to `out`.
    fn write_body(&self, out: &mut Vec<u8>) -> Result<(), WireError> {
        match self {
            Message::Get(m) => to_body(m, out),
            Message::Put(m) => to_body(m, out),
            Message::Delete(m) => to_body(m, out),
            Message::Stats
            | Message::Ring
            | Message::Ping
            | Message::Pong
            | Message::Stopping
            | Message::Members
            | Message::AuthOk
            | Message::Aae => to_body(&(), out),
            Message::Auth(m) => to_body(m, out),
            Message::AaeReply(m) => to_body(m, out),
            Message::Plan(m) => to_body(m, out),
            Message::PlanReply(m) => to_body(m, out),
            Message::Gossip(m) => to_body(m, out),
            Message::GossipReply(m) => to_body(m, out),
            Message::TransferBatch(m) => to_body(m, out),
            Message::TransferAck(m) => to_body(m, out),
            Message::HandoffBatch(m) => to_body(m, out),
            Message::HandoffAck(m) => to_body(m, out),
            Message::AaeTree(m) => to_body(m, out),
            Message::AaeTreeReply(m) => to_body(m, out),
            Message::AaeDigests(m) => to_body(m, out),
            Message::AaeDigestsReply(m) => to_body(m, out),
            Message::AaeSync(m) => to_body(m, out),
            Message::AaeSyncReply(m) => to_body(m, out),
            Message::AaePurge(m) => to_body(m, out),
            Message::AaePurgeReply(m) => to_body(m, out),
            Message::MembersReply(m) => to_body(m, out),
            Message::Throttle(m) => to_body(m, out),
            Message::ThrottleReply(m) => to_body(m, out),
            Message::PeerHello(m) => to_body(m, out),
            Message::PeerChallenge(m) => to_body(m, out),
            Message::PeerProof(m) => to_body(m, out),
            Message::GetLocal(m) => to_body(m, out),
            Message::ReplicaRead(m) => to_body(m, out),
            Message::ReplicaWrite(m) => to_body(m, out),
            Message::LocalReply(m) => to_body(m, out),
            Message::RingReply(m) => to_body(m, out),
            Message::ReplicaReply(m) => to_body(m, out),
            Message::GetReply(m) => to_body(m, out),
            Message::PutReply(m) => to_body(m, out),
            Message::StatsReply(m) => to_body(m, out),
            Message::Error(m) => to_body(m, out),
        }
    }

    /// This message as a complete frame.
    pub fn encode(&self, request_id: u64) -> Result<Vec<u8>, WireError> {
        let mut out = Vec::new();
        self.encode_into(request_id, &mut out)?;
        // Grown by doubling, a large frame (a transfer batch) could hold twice its size
        // while it waits in a connection's queue, whose budget counts its length.
        if out.capacity() - out.len() > SHRINK_ABOVE_BYTES {
            out.shrink_to_fit();
        }
        Ok(out)
    }

    /// Decodes a frame's body according to its kind.
    pub fn decode(frame: &Frame) -> Result<Message, WireError> {
        let body = &frame.body;
        let k = frame.kind;
        Ok(match k {
            kind::GET => Message::Get(from_body(k, body)?),
            kind::PUT => Message::Put(from_body(k, body)?),
            kind::DELETE => Message::Delete(from_body(k, body)?),
            kind::STATS => {
                from_body::<()>(k, body)?;
                Message::Stats
            }
            kind::RING => {
                from_body::<()>(k, body)?;
                Message::Ring
            }
            kind::AUTH => Message::Auth(from_body(k, body)?),
            kind::AUTH_OK => {
                from_body::<()>(k, body)?;
                Message::AuthOk
            }
            kind::PING => {
                from_body::<()>(k, body)?;
                Message::Ping
            }
            kind::PONG => {
                from_body::<()>(k, body)?;
                Message::Pong
            }
            kind::PEER_STOPPING => {
                from_body::<()>(k, body)?;
                Message::Stopping
            }
            kind::MEMBERS => {
                from_body::<()>(k, body)?;
                Message::Members
            }
            kind::MEMBERS_REPLY => Message::MembersReply(from_body(k, body)?),
            kind::AAE => {
                from_body::<()>(k, body)?;
                Message::Aae
            }
            kind::AAE_REPLY => Message::AaeReply(from_body(k, body)?),
            kind::PLAN => Message::Plan(from_body(k, body)?),
            kind::PLAN_REPLY => Message::PlanReply(from_body(k, body)?),
            kind::GOSSIP => Message::Gossip(from_body(k, body)?),
            kind::GOSSIP_REPLY => Message::GossipReply(from_body(k, body)?),
            kind::TRANSFER_BATCH => Message::TransferBatch(from_body(k, body)?),
            kind::TRANSFER_ACK => Message::TransferAck(from_body(k, body)?),
            kind::HANDOFF_BATCH => Message::HandoffBatch(from_body(k, body)?),
            kind::HANDOFF_ACK => Message::HandoffAck(from_body(k, body)?),
            kind::AAE_TREE => Message::AaeTree(from_body(k, body)?),
            kind::AAE_TREE_REPLY => Message::AaeTreeReply(from_body(k, body)?),
            kind::AAE_DIGESTS => Message::AaeDigests(from_body(k, body)?),
            kind::AAE_DIGESTS_REPLY => Message::AaeDigestsReply(from_body(k, body)?),
            kind::AAE_SYNC => Message::AaeSync(from_body(k, body)?),
            kind::AAE_SYNC_REPLY => Message::AaeSyncReply(from_body(k, body)?),
            kind::AAE_PURGE => Message::AaePurge(from_body(k, body)?),
            kind::AAE_PURGE_REPLY => Message::AaePurgeReply(from_body(k, body)?),
            kind::THROTTLE => Message::Throttle(from_body(k, body)?),
            kind::THROTTLE_REPLY => Message::ThrottleReply(from_body(k, body)?),
            kind::PEER_HELLO => Message::PeerHello(from_body(k, body)?),
            kind::PEER_CHALLENGE => Message::PeerChallenge(from_body(k, body)?),
            kind::PEER_PROOF => Message::PeerProof(from_body(k, body)?),
            kind::GET_LOCAL => Message::GetLocal(from_body(k, body)?),
            kind::REPLICA_READ => Message::ReplicaRead(from_body(k, body)?),
            kind::REPLICA_WRITE => Message::ReplicaWrite(from_body(k, body)?),
            kind::LOCAL_REPLY => Message::LocalReply(from_body(k, body)?),
            kind::RING_REPLY => Message::RingReply(from_body(k, body)?),
            kind::REPLICA_REPLY => Message::ReplicaReply(from_body(k, body)?),
            kind::GET_REPLY => Message::GetReply(from_body(k, body)?),
            kind::PUT_REPLY => Message::PutReply(from_body(k, body)?),
            kind::STATS_REPLY => Message::StatsReply(from_body(k, body)?),
            kind::ERROR => Message::Error(error_body(k, body)?),
            _ => return Err(WireError::UnknownMessageType { kind: k }),
        })
    }

    /// Whether this message asks for a reply (as opposed to being one).
    pub fn is_request(&self) -> bool {
        matches!(
            self,
            Message::Get(_)
                | Message::Put(_)
                | Message::Delete(_)
                | Message::Stats
                | Message::GetLocal(_)
                | Message::Ring
                | Message::ReplicaRead(_)
                | Message::ReplicaWrite(_)
                | Message::Ping
                | Message::Members
                | Message::Throttle(_)
                | Message::Aae
                | Message::Plan(_)
                | Message::Gossip(_)
                | Message::TransferBatch(_)
                | Message::HandoffBatch(_)
                | Message::AaeTree(_)
                | Message::AaeDigests(_)
                | Message::AaeSync(_)
                | Message::AaePurge(_)
        )
    }
}

/// Encodes a message body with field names, so the protocol can grow optional fields.
fn to_body<T: Serialize>(message: &T, out: &mut Vec<u8>) -> Result<(), WireError> {
    rmp_serde::encode::write_named(out, message).map_err(|e| WireError::Encode {
        reason: e.to_string(),
    })
}

/// An error's body: a `ServiceError`, or, when this build cannot read it but can name it
/// (a newer node's error), `ServiceError::Unreadable` with that name.
fn error_body(kind: u16, body: &[u8]) -> Result<ServiceError, WireError> {
    from_body(kind, body).or_else(|malformed| {
        from_body::<crate::error::ErrorName>(kind, body)
            .map(|name| ServiceError::Unreadable { kind: name.0 })
            .map_err(|_| malformed)
    })
}

/// Decodes a body and insists that it is consumed exactly.
pub(crate) fn from_body<T: DeserializeOwned>(kind: u16, body: &[u8]) -> Result<T, WireError> {
    let mut deserializer = rmp_serde::Deserializer::new(Cursor::new(body));
    let message = T::deserialize(&mut deserializer).map_err(|e| WireError::Malformed {
        kind,
        reason: e.to_string(),
    })?;
    let consumed = deserializer.position() as usize;
    if consumed != body.len() {
        return Err(WireError::TrailingBytes {
            kind,
            extra: body.len().saturating_sub(consumed),
        });
    }
    Ok(message)
}

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Message::Get(m) => write!(f, "get ({} B key)", m.key.len()),
            Message::Put(m) => write!(f, "put ({} B key, {} B value)", m.key.len(), m.value.len()),
            Message::Delete(m) => write!(f, "delete ({} B key)", m.key.len()),
            Message::Stats => write!(f, "stats"),
            Message::GetLocal(m) => write!(f, "get local ({} B key)", m.key.len()),
            Message::Ring => write!(f, "ring"),
            Message::Auth(_) => write!(f, "auth"),
            Message::AuthOk => write!(f, "auth ok"),
            Message::Ping => write!(f, "ping"),
            Message::PeerHello(m) => write!(f, "hello from {}", m.node),
            Message::PeerChallenge(m) => write!(f, "challenge from {}", m.node),
            Message::PeerProof(_) => write!(f, "peer proof"),
            Message::Pong => write!(f, "pong"),
            Message::Stopping => write!(f, "stopping"),
            Message::Members => write!(f, "members"),
            Message::MembersReply(m) => write!(f, "members reply ({} members)", m.members.len()),
            Message::Throttle(m) => write!(f, "throttle {:?}", m.change),
            Message::ThrottleReply(m) => write!(f, "throttle reply ({} stages)", m.stages.len()),
            Message::ReplicaRead(m) => write!(f, "replica read ({} B key)", m.key.len()),
            Message::ReplicaWrite(m) => {
                write!(f, "replica write ({} B key, {})", m.key.len(), m.versions)
            }
            Message::LocalReply(m) => write!(f, "local reply {}", m.versions),
            Message::RingReply(m) => write!(f, "ring reply (version {})", m.membership.version),
            Message::ReplicaReply(m) => write!(f, "replica reply {}", m.versions),
            Message::GetReply(m) => write!(f, "get reply ({} values)", m.values.len()),
            Message::PutReply(_) => write!(f, "put reply"),
            Message::StatsReply(m) => write!(f, "stats reply ({} stages)", m.stages.len()),
            Message::Aae => write!(f, "anti-entropy report"),
            Message::AaeReply(m) => {
                write!(f, "anti-entropy report ({} partitions)", m.partitions.len())
            }
            Message::Plan(m) => write!(f, "plan {:?} (commit: {})", m.change, m.commit),
            Message::PlanReply(m) => write!(
                f,
                "plan reply ({} transfers, {} pending)",
                m.plan.transfers.len(),
                m.pending.len()
            ),
            Message::Gossip(m) => write!(f, "gossip (digest {:016x})", m.digest),
            Message::GossipReply(m) => {
                write!(f, "gossip reply (value: {})", m.membership.is_some())
            }
            Message::TransferBatch(m) => write!(
                f,
                "transfer of partition {} ({} objects)",
                m.partition,
                m.objects.len()
            ),
            Message::TransferAck(m) => write!(f, "transfer ack ({} merged)", m.merged),
            Message::HandoffBatch(m) => write!(f, "handoff of {} hinted objects", m.objects.len()),
            Message::HandoffAck(m) => write!(f, "handoff ack ({} merged)", m.merged),
            Message::AaeTree(m) => write!(f, "tree of partition {}", m.partition),
            Message::AaeTreeReply(m) => write!(f, "tree reply ({} hashes)", m.hashes.len()),
            Message::AaeDigests(m) => write!(
                f,
                "digests of {} segments of partition {}",
                m.segments.len(),
                m.partition
            ),
            Message::AaeDigestsReply(m) => write!(f, "digests reply ({} keys)", m.digests.len()),
            Message::AaeSync(m) => write!(
                f,
                "sync of partition {} ({} objects, {} wanted)",
                m.partition,
                m.objects.len(),
                m.want.len()
            ),
            Message::AaeSyncReply(m) => write!(f, "sync reply ({} objects)", m.objects.len()),
            Message::AaePurge(m) => write!(f, "purge {:?} ({} keys)", m.phase, m.objects.len()),
            Message::AaePurgeReply(m) => write!(f, "purge reply ({} keys)", m.keys.len()),
            Message::Error(e) => write!(f, "error: {e}"),
        }
    }
}
