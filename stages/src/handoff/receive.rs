//! The receiving side: a fallback's `HandoffBatch` merged when nothing is owed for the last one,
//! refused as busy otherwise (and refused whole, `NotAReplica`, when it holds a key this node
//! does not hold in its view), and the backlog the gate reports (see the module above).

use super::*;

impl HandoffMachine {
    /// Reports the backlog: the hints this node holds, the tokens it owes for batches it took
    /// in, and the objects of batches it refused over the last [`REFUSED_WINDOW`].
    pub(super) fn report_backlog(&mut self, now: Instant) {
        self.refused
            .retain(|_, (at, _)| now.saturating_duration_since(*at) < REFUSED_WINDOW);
        let refused: u64 = self.refused.values().map(|(_, objects)| objects).sum();
        self.gate
            .report_backlog(self.held + self.receive_debt + refused);
    }

    /// Pays what the gate grants now towards the tokens owed for received batches.
    pub(super) fn pay_receive_debt(&mut self, now: Instant) {
        self.gate.pay(&mut self.receive_debt, now);
    }

    /// A fallback delivered hints meant for this node: if nothing is owed for the last batch,
    /// merge them all in one storage operation and acknowledge once storage has them;
    /// otherwise refuse them with `Overloaded` (see the module's RECEIVER SIDE).
    pub(super) fn serve(
        &mut self,
        now: Instant,
        origin: Origin,
        objects: Vec<(Vec<u8>, VersionSet)>,
        out: &mut Outbox,
    ) {
        // A hint for a key this node does not hold in its view (the fallback's view is older
        // or newer) is not stored: cleanup would drop it, perhaps after its final sync, while
        // the fallback deleted its copy. The fallback keeps the hints and, once its view says
        // so, sends them to the key's replicas (`retarget.rs`).
        if let Some(error) = self.not_a_replica(&objects) {
            return out.reply(IntakeEvent::reply(origin, &Message::Error(error)));
        }
        let count = u32::try_from(objects.len()).unwrap_or(u32::MAX);
        self.pay_receive_debt(now);
        if self.receive_debt > 0 {
            let mut first = DefaultHasher::new();
            objects.first().map(|(key, _)| key).hash(&mut first);
            let batch = (origin.conn, first.finish());
            self.refused
                .retain(|_, (at, _)| now.saturating_duration_since(*at) < REFUSED_WINDOW);
            if self.refused.len() < MAX_REFUSED_TRACKED || self.refused.contains_key(&batch) {
                self.refused.insert(batch, (now, u64::from(count)));
            }
            self.report_backlog(now);
            let busy = ServiceError::Overloaded {
                stage: "handoff".into(),
            };
            return out.reply(IntakeEvent::reply(origin, &Message::Error(busy)));
        }
        self.receive_debt = u64::from(count);
        self.pay_receive_debt(now);
        self.report_backlog(now);
        let merge = self.storage(StorageRequest::sync(objects, Vec::new()));
        self.serving.insert(merge.op, (origin, count));
        out.request(merge);
    }

    /// The refusal of a batch holding a key whose partition this node holds in no ring of its
    /// view, naming the first such partition.
    fn not_a_replica(&self, objects: &[(Vec<u8>, VersionSet)]) -> Option<ServiceError> {
        let (membership, me, n) = self.membership.as_ref()?;
        objects
            .iter()
            .find_map(|(key, _)| membership.not_a_replica(me, key, *n))
    }
}
