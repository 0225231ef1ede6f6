//! Membership (Dynamo §4.8): who is in the cluster, where they listen, and the partition
//! assignment derived from them, as one versioned value.
//!
//! Every node builds the same [`Membership`] from the same member list, so all agree on every
//! preference list. The value is replaced whole (a new version) when members change; a
//! [`MembershipView`] is the shared, swappable handle the stages read it through, so that the
//! gossip stage can later install a newer version without any stage holding a stale copy.
//! Pure except for the view's lock.

use crate::ring::{NodeSpec, Ring, RingError};
use crate::NodeId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

/// One member of the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Its node id.
    pub id: NodeId,
    /// Where it listens for clients and peers.
    pub addr: SocketAddr,
    /// Relative capacity.
    pub weight: u32,
    /// Failure zone, if configured.
    pub zone: Option<String>,
}

/// The cluster's members and ring at one version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// Grows with every change; a node or client holding an older version refreshes.
    pub version: u64,
    members: BTreeMap<NodeId, Member>,
    ring: Ring,
}

impl Membership {
    /// The membership of `members` at `version`, with a fresh ring of `partitions`.
    pub fn new(
        version: u64,
        partitions: u32,
        members: Vec<Member>,
    ) -> Result<Membership, RingError> {
        let specs: Vec<NodeSpec> = members
            .iter()
            .map(|m| NodeSpec {
                id: m.id.clone(),
                weight: m.weight,
                zone: m.zone.clone(),
            })
            .collect();
        let ring = Ring::new(partitions, &specs)?;
        let members = members.into_iter().map(|m| (m.id.clone(), m)).collect();
        Ok(Membership {
            version,
            members,
            ring,
        })
    }

    /// The ring.
    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    /// A member by id.
    pub fn member(&self, id: &NodeId) -> Option<&Member> {
        self.members.get(id)
    }

    /// Every member, in id order.
    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }

    /// Where a member listens.
    pub fn addr_of(&self, id: &NodeId) -> Option<SocketAddr> {
        self.members.get(id).map(|m| m.addr)
    }
}

/// The shared handle to the current membership. Reads are a lock and an `Arc` clone; the
/// value read is immutable, so a stage can use it for a whole request without holding the lock.
#[derive(Clone, Debug)]
pub struct MembershipView {
    current: Arc<RwLock<Arc<Membership>>>,
}

impl MembershipView {
    /// A view holding `membership`.
    pub fn new(membership: Membership) -> MembershipView {
        MembershipView {
            current: Arc::new(RwLock::new(Arc::new(membership))),
        }
    }

    /// The current membership.
    pub fn current(&self) -> Arc<Membership> {
        // A poisoned lock means a writer panicked mid-swap; the Arc inside is still whole.
        match self.current.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Installs `membership` if it is newer than the current one; returns whether it was.
    pub fn install(&self, membership: Membership) -> bool {
        let mut guard = match self.current.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if membership.version > guard.version {
            *guard = Arc::new(membership);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str, port: u16) -> Member {
        Member {
            id: NodeId::new(id),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            weight: 1,
            zone: None,
        }
    }

    /// Goal: nodes given the same members in any order derive the same membership and ring.
    #[test]
    fn same_members_in_any_order_give_the_same_ring() {
        let a = Membership::new(
            1,
            64,
            vec![member("n1", 1), member("n2", 2), member("n3", 3)],
        )
        .expect("valid");
        let b = Membership::new(
            1,
            64,
            vec![member("n3", 3), member("n1", 1), member("n2", 2)],
        )
        .expect("valid");
        assert_eq!(a, b);
        assert_eq!(
            a.addr_of(&NodeId::new("n2")),
            Some(SocketAddr::from(([127, 0, 0, 1], 2)))
        );
    }

    /// Goal: a view installs only newer versions, so a stale gossip message cannot roll it back.
    #[test]
    fn view_installs_only_newer_versions() {
        let view =
            MembershipView::new(Membership::new(2, 8, vec![member("n1", 1)]).expect("valid"));
        assert!(!view.install(
            Membership::new(1, 8, vec![member("n1", 1), member("n2", 2)]).expect("valid")
        ));
        assert_eq!(view.current().members().count(), 1);
        assert!(view.install(
            Membership::new(3, 8, vec![member("n1", 1), member("n2", 2)]).expect("valid")
        ));
        assert_eq!(view.current().members().count(), 2);
    }
}
