//! shoal's stages and the Dynamo algorithms they drive.
//!
//! - [`event`]: the one vocabulary: every stage's input event, typed ids, `ReplyTo`, the
//!   stage table (`StageId`).
//! - `seda`: the stage runtime (bounded queues, worker pools, batching, stats, rate gates) and
//!   the machine/outbox contract every stage's logic follows.
//! - [`sim`]: the deterministic simulator: whole nodes in one thread, seeded.
//! - Paper modules, pure (no threads, channels, sockets or clocks): [`ring`] (§4.2, §6.2),
//!   [`vclock`] and [`versioning`] (§4.4), [`quorum`] (§4.5), [`durability`] (§6.1, buffered
//!   writes), [`controller`] (§6.5, the resource controller's law), [`merkle`] (§4.7, the
//!   anti-entropy trees), [`rng`] (SplitMix64, seeded randomness the simulator replays).
//! - [`wire`]: frames and every MessagePack encoding; the only module that knows MessagePack.
//! - One module per stage: [`intake`] (mio sockets, client and peer connections), [`parse`]
//!   (frames → typed requests), [`coordinate`] (quorums and deadlines), [`replicate`] (requests
//!   to peers and their answers), [`storage`] (fjall or memory behind an engine trait, and
//!   the commit stage: group commit, the one place a thread waits for the disk),
//!   [`repair`] (read repair), [`handoff`] (hinted handoff) and [`anti_entropy`] (Merkle
//!   exchanges and tombstone purge), all background; [`gossip`] (the membership, §4.8: merged
//!   with peers, changed by the operator's plan and commit), beside the pure [`membership`];
//!   [`transfer`] (ownership transfer after a commit, and dropping what a node no longer
//!   holds), background.
//!
//! See ARCHITECTURE.md at the repository root for the path of a request through the stages.
#![warn(missing_docs)]

pub mod anti_entropy;
pub mod controller;
pub mod coordinate;
pub mod durability;
pub mod error;
pub mod event;
pub mod failure_detector;
pub mod gossip;
pub mod handoff;
pub mod intake;
pub mod membership;
pub mod merkle;
pub mod node_id;
pub mod parse;
pub mod quorum;
pub mod repair;
pub(crate) mod repeats;
pub mod replicate;
pub mod ring;
pub mod rng;
pub mod seda;
pub mod sim;
pub mod storage;
pub mod transfer;
pub mod vclock;
pub mod versioning;
pub mod wire;

pub use durability::Durability;
pub use error::ServiceError;
pub use node_id::NodeId;
