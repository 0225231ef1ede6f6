//! Gossip (Dynamo §4.8): this node's copy of the membership, kept in step with every other
//! node's by push-pull rounds, and changed only by the operator's plan-first requests.
//!
//! The stage is the one writer of the node's [`MembershipView`]: it merges what peers send,
//! applies `admin join|leave|remove|commit`, records finished transfers, installs each new
//! value for the other stages and saves it through storage (durably, whatever `sync` says).
//!
//! DRIVER SIDE: every `interval` the machine picks a random member and, unless that one is a
//! seed, a random seed too ([`pick_peers`]), and sends each its digest. An answer carrying the
//! peer's value is merged; if the merged value still differs from the peer's, it is pushed
//! back, so one round leaves both sides with the join of their values.
//!
//! Changes also travel at once instead of waiting for rounds: a change made here (an
//! operator's, or a transfer finished) is pushed to every member, and a value that changed by
//! a merge is pushed on to one random member (rumour mongering, Demers et al. 1987), so a
//! change reaches every node in a few round trips; the periodic rounds catch whoever missed it.
//!
//! RECEIVER SIDE: a peer's digest equal to ours gets an empty answer; a pushed value is
//! checked (same Q, whole rings) and merged; the answer carries our value if it differs from
//! the peer's.
//!
//! Seeds are the members the config lists: a node started with only seeds learns the rest
//! from them. A node that is not a member yet (waiting for `admin join`) is refused by the
//! others' handshakes until a join through any member names it; its rounds then succeed.

use crate::error::ServiceError;
use crate::event::{
    CoordinateEvent, Event, GossipEvent, GossipServe, IntakeEvent, Now, OpId, Origin, PeerDone,
    ReplicateEvent, ReplyTo, StorageDone, StorageEvent, StorageRequest, TransferBoard,
};
use crate::membership::{MemberState, Membership, MembershipView};
use crate::rng::SplitMix64;
use crate::seda::{Machine, Outbox};
use crate::wire::{
    encode_membership, GossipReply, GossipRequest, MembershipChange, Message, PlanReply,
    PlanRequest,
};
use crate::NodeId;
use slog::{debug, info, warn, Logger};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How long a round's answer may take before the round is forgotten (the next round asks
/// another peer anyway).
const ROUND_DEADLINE: Duration = Duration::from_secs(2);

/// How the gossip stage is set up.
#[derive(Clone, Debug)]
pub struct GossipSettings {
    /// This node.
    pub node: NodeId,
    /// Replicas per key (transfers are computed over N-node preference lists).
    pub n: usize,
    /// Q: a peer's value with another Q is refused.
    pub partitions: u32,
    /// Time between rounds.
    pub interval: Duration,
    /// The members the config lists: asked every round (unless the random peer is one).
    pub seeds: Vec<NodeId>,
    /// Where this node listens (`None`: not known, as in the simulator): a membership that
    /// has it elsewhere is warned of, since peers dial the membership's address.
    pub listen: Option<SocketAddr>,
}

/// One round's request to a peer.
struct Round {
    /// The peer asked.
    peer: NodeId,
    /// When the round is forgotten if unanswered.
    deadline: Instant,
}

/// The gossip stage's machine.
pub struct GossipMachine {
    settings: GossipSettings,
    /// This node's copy of the membership (the view holds the same value for readers).
    membership: Membership,
    view: MembershipView,
    /// The transfer stage's progress, shown in plan answers.
    board: TransferBoard,
    /// Peer choice, seeded from the node id (so the simulator replays).
    rng: SplitMix64,
    next_round: Option<Instant>,
    /// The `now` of the event being handled (for deadlines of pushes it starts).
    now: Instant,
    rounds: BTreeMap<OpId, Round>,
    /// Saves storage is working on, with the operator replies that wait for them.
    saves: BTreeMap<OpId, Vec<(Origin, Message)>>,
    /// Replies waiting for a save that could not be queued; the save is retried each tick.
    unsaved: Option<Vec<(Origin, Message)>>,
    next_op: u64,
    /// Where the membership had this node when that differed from `settings.listen` (last
    /// warned of), so a warning is logged once per change and its end is said.
    listed_elsewhere: Option<SocketAddr>,
    logger: Logger,
}

impl GossipMachine {
    /// A machine holding `membership` (the config's or the saved one), which it installs into
    /// `view`; `started` is the driver's clock at the start.
    pub fn new(
        settings: GossipSettings,
        membership: Membership,
        view: MembershipView,
        board: TransferBoard,
        started: Instant,
        logger: Logger,
    ) -> GossipMachine {
        view.set(membership.clone());
        let settings_interval = settings.interval;
        let rng = SplitMix64::new(
            settings
                .node
                .as_str()
                .bytes()
                .fold(0x5EED_u64, |h, b| h.rotate_left(8) ^ u64::from(b)),
        );
        let mut machine = GossipMachine {
            settings,
            membership,
            view,
            board,
            rng,
            // The first round waits an interval: peers of a cluster starting together are not
            // all listening yet, and a failed round would put their links into backoff just as
            // the first client requests arrive.
            next_round: Some(started + settings_interval),
            now: started,
            rounds: BTreeMap::new(),
            saves: BTreeMap::new(),
            unsaved: None,
            next_op: 0,
            listed_elsewhere: None,
            logger,
        };
        machine.check_own_address();
        machine
    }

    /// Logs where the membership has this node when that is not where it listens (peers dial
    /// the membership's address, so they cannot reach it), once per address, and says when
    /// that is over. A trial moved a running node by mistake, and the node said nothing.
    fn check_own_address(&mut self) {
        let Some(listen) = self.settings.listen else {
            return;
        };
        let listed = self
            .membership
            .listed_elsewhere(&self.settings.node, listen);
        if listed == self.listed_elsewhere {
            return;
        }
        let me = &self.settings.node;
        match listed {
            Some(listed) => {
                // A node listening on every interface does not know the IP peers reach it at.
                let addr = if listen.ip().is_unspecified() {
                    format!("<this host's IP>:{}", listen.port())
                } else {
                    listen.to_string()
                };
                warn!(self.logger, "the membership has this node at another address than it listens on: peers dial that one and cannot reach it; if the node moved, run `shoal admin move --id {} --addr {}` through any member", me, addr;
                      "listens" => %listen, "membership" => %listed);
            }
            // No longer elsewhere: where it listens, or no longer a member (removed).
            None => {
                info!(self.logger, "the membership no longer has this node at another address"; "listens" => %listen);
            }
        }
        self.listed_elsewhere = listed;
    }

    fn new_op(&mut self) -> OpId {
        self.next_op += 1;
        OpId(self.next_op)
    }

    // ---- DRIVER SIDE ----

    fn round(&mut self, now: Instant, out: &mut Outbox) {
        let me = self.settings.node.clone();
        let members = self.others();
        let seeds: Vec<NodeId> = self
            .settings
            .seeds
            .iter()
            .filter(|s| **s != me && self.membership.member(s).is_some())
            .cloned()
            .collect();
        let (first, second) = (self.rng.next_u64(), self.rng.next_u64());
        for peer in pick_peers(&members, &seeds, first, second) {
            let digest = self.membership.digest();
            self.send(peer, digest, None, now, out);
        }
    }

    fn send(
        &mut self,
        peer: NodeId,
        digest: u64,
        membership: Option<Membership>,
        now: Instant,
        out: &mut Outbox,
    ) {
        let op = self.new_op();
        let deadline = now + ROUND_DEADLINE;
        self.rounds.insert(
            op,
            Round {
                peer: peer.clone(),
                deadline,
            },
        );
        out.request(ReplicateEvent::Send {
            peer,
            op,
            message: Message::Gossip(Box::new(GossipRequest { digest, membership })),
            deadline,
            reply_to: ReplyTo::Gossip,
        });
    }

    fn on_peer(&mut self, now: Instant, done: PeerDone, out: &mut Outbox) {
        let Some(round) = self.rounds.remove(&done.op) else {
            return; // past its deadline
        };
        if matches!(done.result, Ok(Message::GossipReply(_))) {
            // Gossip feeds the failure detector: a peer that answered a round is up (an offer:
            // dropped, not waited for, when the coordinator's queue is full).
            out.offer(CoordinateEvent::Heard {
                peer: round.peer.clone(),
            });
        }
        match done.result {
            Ok(Message::GossipReply(reply)) => {
                let Some(theirs) = reply.membership else {
                    return; // in step
                };
                let their_digest = theirs.digest();
                self.absorb(theirs, &round.peer, out);
                if self.membership.digest() != their_digest {
                    let digest = self.membership.digest();
                    let value = self.membership.clone();
                    self.send(round.peer, digest, Some(value), now, out);
                }
            }
            Ok(other) => {
                warn!(self.logger, "unexpected answer to gossip"; "peer" => %round.peer, "answer" => %other)
            }
            Err(error) => {
                debug!(self.logger, "gossip round failed"; "peer" => %round.peer, "error" => %error)
            }
        }
    }

    // ---- RECEIVER SIDE ----

    fn serve_gossip(&mut self, origin: Origin, request: GossipRequest, out: &mut Outbox) {
        if let Some(theirs) = request.membership {
            self.absorb(theirs, &NodeId::new("(a peer's push)"), out);
        }
        let membership =
            (self.membership.digest() != request.digest).then(|| self.membership.clone());
        out.reply(IntakeEvent::reply(
            origin,
            &Message::GossipReply(Box::new(GossipReply { membership })),
        ));
    }

    /// Merges a peer's value if it is valid; installs and saves the result if it changed.
    fn absorb(&mut self, theirs: Membership, from: &NodeId, out: &mut Outbox) -> bool {
        if let Err(error) = theirs.check(self.settings.partitions) {
            warn!(self.logger, "refusing a peer's membership"; "peer" => %from, "error" => %error);
            return false;
        }
        let before_ring = self.membership.assignment().stamp.clone();
        if !self.membership.merge(&theirs) {
            return false;
        }
        if self.membership.assignment().stamp != before_ring {
            info!(self.logger, "new ring from gossip";
                  "commit" => self.membership.assignment().stamp.counter,
                  "by" => %self.membership.assignment().stamp.node,
                  "pending_transfers" => self.membership.pending_transfers(self.settings.n).len());
        }
        self.changed(Vec::new(), out);
        // Rumour: pass the news on to one random member now rather than at the next round.
        let members = self.others();
        if !members.is_empty() {
            let pick = (self.rng.next_u64() % members.len() as u64) as usize;
            let now = self.now;
            self.push(vec![members[pick].clone()], now, out);
        }
        true
    }

    /// Every member but this node.
    fn others(&self) -> Vec<NodeId> {
        let me = &self.settings.node;
        self.membership
            .members()
            .map(|m| m.id.clone())
            .filter(|id| id != me)
            .collect()
    }

    /// Sends our whole value to `peers`.
    fn push(&mut self, peers: Vec<NodeId>, now: Instant, out: &mut Outbox) {
        let digest = self.membership.digest();
        for peer in peers {
            let value = self.membership.clone();
            self.send(peer, digest, Some(value), now, out);
        }
    }

    // ---- the operator's changes ----

    fn serve_plan(&mut self, origin: Origin, request: PlanRequest, out: &mut Outbox) {
        let me = self.settings.node.clone();
        let n = self.settings.n;
        let before = self.membership.digest();
        let applied = (|| {
            match request.change {
                Some(MembershipChange::Join(member)) => self.membership.stage_join(&me, member)?,
                Some(MembershipChange::Leave(node)) => {
                    self.membership
                        .stage_departure(&me, &node, MemberState::Leaving)?
                }
                Some(MembershipChange::Remove(node)) => {
                    self.membership
                        .stage_departure(&me, &node, MemberState::Removed)?
                }
                Some(MembershipChange::Move { node, addr }) => {
                    self.membership.stage_move(&me, &node, addr)?
                }
                None => {}
            }
            if request.commit {
                self.membership.commit(&me, n)
            } else {
                self.membership.plan(n).map(|(plan, _)| plan)
            }
        })();
        let reply = match applied {
            Ok(plan) => {
                if request.commit {
                    info!(self.logger, "membership committed"; "joining" => names(&plan.joining),
                          "leaving" => names(&plan.leaving), "removed" => names(&plan.removed),
                          "transfers" => plan.transfers.len());
                }
                Message::PlanReply(Box::new(PlanReply {
                    node: me,
                    version: self.membership.version,
                    committed: request.commit,
                    plan,
                    pending: self.membership.pending_transfers(n),
                    progress: self.board.read(),
                    drops_waiting: self.board.drops_waiting(),
                }))
            }
            Err(error) => Message::Error(ServiceError::MembershipRefused {
                reason: error.to_string(),
            }),
        };
        if self.membership.digest() == before {
            return out.reply(IntakeEvent::reply(origin, &reply));
        }
        // The operator hears "done" only once the change is on disk.
        self.changed(vec![(origin, reply)], out);
        let (everyone, now) = (self.others(), self.now);
        self.push(everyone, now, out);
    }

    /// Installs the current value for the other stages and saves it; `replies` are sent once
    /// it is on disk.
    fn changed(&mut self, replies: Vec<(Origin, Message)>, out: &mut Outbox) {
        let before = self.view.current();
        for member in self.membership.members() {
            match before.addr_of(&member.id) {
                Some(from) if from != member.addr => {
                    info!(self.logger, "member moved: dialled at its new address from now on";
                          "member" => %member.id, "from" => %from, "to" => %member.addr);
                }
                _ => {}
            }
        }
        self.view.set(self.membership.clone());
        self.check_own_address();
        self.save(replies, out);
    }

    fn save(&mut self, mut replies: Vec<(Origin, Message)>, out: &mut Outbox) {
        if let Some(waiting) = self.unsaved.take() {
            replies.extend(waiting);
        }
        let bytes = match encode_membership(&self.membership) {
            Ok(bytes) => bytes,
            Err(error) => {
                warn!(self.logger, "membership not saved"; "error" => %error);
                return answer_all(
                    replies,
                    &ServiceError::Storage {
                        reason: error.to_string(),
                    },
                    out,
                );
            }
        };
        let op = self.new_op();
        self.saves.insert(op, replies);
        out.request(StorageEvent {
            op,
            reply_to: ReplyTo::Gossip,
            request: StorageRequest::SaveMembership { bytes },
        });
    }

    fn on_storage(&mut self, done: StorageDone, out: &mut Outbox) {
        let Some(replies) = self.saves.remove(&done.op) else {
            return;
        };
        match done.result {
            Ok(_) => {
                for (origin, reply) in replies {
                    out.reply(IntakeEvent::reply(origin, &reply));
                }
            }
            Err(error) => {
                warn!(self.logger, "membership not saved; retrying"; "error" => %error);
                self.unsaved.get_or_insert_with(Vec::new).extend(replies);
            }
        }
    }
}

/// Answers every waiting operator with `error`.
fn answer_all(replies: Vec<(Origin, Message)>, error: &ServiceError, out: &mut Outbox) {
    for (origin, _) in replies {
        out.reply(IntakeEvent::reply(origin, &Message::Error(error.clone())));
    }
}

/// The peers of one round: a random member (`first` picks it), and a random seed (`second`)
/// unless the member already is one. Every node runs this, which makes the spread epidemic
/// (Demers et al. 1987: push-pull reaches n nodes in about log3 n rounds) while the seeds keep
/// nodes that only know seeds from forming an island.
pub fn pick_peers(members: &[NodeId], seeds: &[NodeId], first: u64, second: u64) -> Vec<NodeId> {
    let mut peers = Vec::with_capacity(2);
    if !members.is_empty() {
        peers.push(members[(first % members.len() as u64) as usize].clone());
    }
    if !seeds.is_empty() && !peers.iter().any(|p| seeds.contains(p)) {
        peers.push(seeds[(second % seeds.len() as u64) as usize].clone());
    }
    peers
}

impl Machine for GossipMachine {
    type Input = GossipEvent;

    fn on_event(&mut self, now: Now, event: GossipEvent, out: &mut Outbox) {
        self.now = now.instant;
        match event {
            GossipEvent::Serve { origin, request } => match request {
                GossipServe::Gossip(request) => self.serve_gossip(origin, *request, out),
                GossipServe::Plan(request) => self.serve_plan(origin, *request, out),
            },
            GossipEvent::Storage(done) => self.on_storage(done, out),
            GossipEvent::Peer(done) => self.on_peer(now.instant, done, out),
            GossipEvent::Transferred { partition, to } => {
                let me = self.settings.node.clone();
                // Only a transfer still pending from this node: a late report of an older
                // commit's transfer must not mark a newer one done before its data moved.
                let pending = self
                    .membership
                    .pending_transfers(self.settings.n)
                    .iter()
                    .any(|t| {
                        t.partition == partition && t.to == to && t.from.as_ref() == Some(&me)
                    });
                if pending && self.membership.mark_transferred(&me, partition, &to) {
                    // The transfer stage logs the copy itself (objects, bytes) at info.
                    debug!(self.logger, "transfer marked done"; "partition" => partition, "to" => %to,
                          "pending" => self.membership.pending_transfers(self.settings.n).len());
                    self.changed(Vec::new(), out);
                    let everyone = self.others();
                    self.push(everyone, now.instant, out);
                }
            }
        }
    }

    fn on_tick(&mut self, now: Now, out: &mut Outbox) {
        let now = now.instant;
        self.now = now;
        self.rounds.retain(|_, round| round.deadline > now);
        if self.unsaved.is_some() && self.saves.is_empty() {
            self.save(Vec::new(), out);
        }
        match self.next_round {
            Some(at) if at > now => {}
            _ => {
                self.next_round = Some(now + self.settings.interval);
                self.round(now, out);
            }
        }
    }

    /// A refused round is simply lost (the next one asks again); a refused save keeps its
    /// replies for the retry.
    fn on_refused(&mut self, _now: Now, event: Event, _error: ServiceError, _out: &mut Outbox) {
        match event {
            Event::Replicate(ReplicateEvent::Send { op, .. }) => {
                self.rounds.remove(&op);
            }
            Event::Storage(StorageEvent { op, .. }) => {
                if let Some(replies) = self.saves.remove(&op) {
                    self.unsaved.get_or_insert_with(Vec::new).extend(replies);
                }
            }
            _ => {}
        }
    }
}

/// Node names for a log line, `n1,n4` (their `Debug` form reads `[NodeId("n1"), ...]`), and
/// "-" for none, as `admin commit` prints it (a trial read the empty field of "removed: ," as
/// a missing value).
fn names(nodes: &[NodeId]) -> String {
    if nodes.is_empty() {
        return "-".to_string();
    }
    let names: Vec<&str> = nodes.iter().map(NodeId::as_str).collect();
    names.join(",")
}

#[cfg(test)]
mod tests;
