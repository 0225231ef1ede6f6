//! The wire: frames, messages and every other MessagePack encoding (contexts, stored objects).
//!
//! Architecture invariant: this is the only module that knows MessagePack. Everything else
//! handles typed values.

mod aae;
mod admin;
mod codec;
mod frame;
mod gossip;
mod handshake;
mod message;
mod requests;

pub use aae::{
    AaeDigests, AaeDigestsReply, AaeObject, AaePartitionReport, AaePeerReport, AaePurge,
    AaePurgeReply, AaeReport, AaeSync, AaeSyncReply, AaeTree, AaeTreeReply, KeyDigest, PurgePhase,
    MAX_AAE_ITEMS,
};
pub use admin::{
    AuthRequest, MemberStatus, MembersReply, OperationLatency, RingReply, StatsReply,
    ThrottleChange, ThrottleReply, ThrottleRequest,
};
pub use codec::{
    decode_version_set, encode_version_set, same_secret, ContextSeal, CorruptObject,
    MAX_CONTEXT_ENTRIES,
};
pub use frame::{
    encode_frame, encoded_header, Frame, FrameDecoder, FrameError, FRAME_OVERHEAD_BYTES,
    LENGTH_BYTES,
};
pub use gossip::{
    decode_membership, encode_membership, GossipReply, GossipRequest, MembershipChange, PlanReply,
    PlanRequest, TransferAck, TransferBatch, TransferProgress,
};
pub use handshake::{
    handshake_bytes, Nonce, PeerChallenge, PeerHello, PeerProof, NONCE_BYTES, PEER_PROTOCOL,
};
pub use message::{kind, Bytes, Message, WireError};
pub use requests::{
    DeleteRequest, GetLocalRequest, GetReply, GetRequest, HandoffAck, HandoffBatch, LocalReply,
    PutReply, PutRequest, ReplicaRead, ReplicaReply, ReplicaWrite,
};

#[cfg(test)]
mod tests;
