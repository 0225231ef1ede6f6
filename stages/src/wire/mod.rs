//! The wire: frames, messages and every other MessagePack encoding (contexts, stored objects).
//!
//! Architecture invariant: this is the only module that knows MessagePack. Everything else
//! handles typed values.

mod aae;
mod codec;
mod frame;
mod gossip;
mod message;

pub use aae::{
    AaeDigests, AaeDigestsReply, AaeObject, AaePartitionReport, AaePeerReport, AaePurge,
    AaePurgeReply, AaeReport, AaeSync, AaeSyncReply, AaeTree, AaeTreeReply, KeyDigest, PurgePhase,
    MAX_AAE_ITEMS,
};
pub use codec::{
    decode_version_set, encode_version_set, same_secret, ContextSeal, CorruptObject,
    MAX_CONTEXT_ENTRIES,
};
pub use frame::{
    encode_frame, encode_frame_into, Frame, FrameDecoder, FrameError, FRAME_OVERHEAD_BYTES,
    LENGTH_BYTES,
};
pub use gossip::{
    decode_membership, encode_membership, GossipReply, GossipRequest, MembershipChange, PlanReply,
    PlanRequest, TransferAck, TransferBatch, TransferProgress,
};
pub use message::{
    handshake_bytes, kind, AuthRequest, Bytes, DeleteRequest, GetLocalRequest, GetReply,
    GetRequest, HandoffAck, HandoffBatch, LocalReply, MemberStatus, MembersReply, Message, Nonce,
    OperationLatency, PeerChallenge, PeerHello, PeerProof, PutReply, PutRequest, ReplicaRead,
    ReplicaReply, ReplicaWrite, RingReply, StatsReply, ThrottleChange, ThrottleReply,
    ThrottleRequest, WireError, NONCE_BYTES,
};

#[cfg(test)]
mod tests;
