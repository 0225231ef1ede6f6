//! What a `/metrics` scrape renders: [`NodeMetrics`], a prometheus-client collector that reads
//! the node's statistics at each scrape, and the helpers that encode one family of gauges,
//! counters or histograms.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Unit;
use shoal_stages::intake::StatsSource;
use shoal_stages::membership::MembershipView;
use shoal_stages::seda::{ExportedHistogram, GateMode};
use shoal_stages::storage::Store;
use std::fmt;

/// What a scrape reads: the node's statistics (those `admin stats` reads) and the shared
/// boards of its storage, membership, failure detector and transfers.
pub struct NodeMetrics {
    /// The stages' statistics, counters, gates and anti-entropy report.
    pub source: StatsSource,
    /// The hints held and the object cache.
    pub store: Store,
    /// Whose hints are reported: every other member, at 0 when none are held.
    pub membership: MembershipView,
    /// N, to count the partitions this node stores.
    pub replicas: usize,
    /// The peers the failure detector holds down.
    pub peers: shoal_stages::failure_detector::PeerBoard,
    /// The transfer stage's outgoing transfers (which are parked).
    pub transfers: shoal_stages::event::TransferBoard,
}

impl fmt::Debug for NodeMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeMetrics")
            .field("node", &self.source.node)
            .finish()
    }
}

/// One family's samples: label value → value.
type Samples<'a, T> = Vec<(&'a str, T)>;

/// A family of one kind of constant metric (`M::TYPE`) with one label.
fn family<T, M: EncodeMetric + TypedMetric>(
    encoder: &mut DescriptorEncoder,
    (name, help, label): (&str, &str, &str),
    samples: Samples<'_, T>,
    metric: fn(T) -> M,
) -> fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, M::TYPE)?;
    for (value_label, value) in samples {
        let labels = [(label, value_label)];
        metric(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A gauge family with one label.
fn gauges<T: prometheus_client::encoding::EncodeGaugeValue>(
    encoder: &mut DescriptorEncoder,
    spec: (&str, &str, &str),
    samples: Samples<'_, T>,
) -> fmt::Result {
    family(encoder, spec, samples, ConstGauge::new)
}

/// A counter family with one label (the encoder adds `_total`).
fn counters(
    encoder: &mut DescriptorEncoder,
    spec: (&str, &str, &str),
    samples: Samples<'_, u64>,
) -> fmt::Result {
    family(encoder, spec, samples, ConstCounter::new)
}

/// A histogram family in seconds with one label, from microsecond histograms.
fn histograms(
    encoder: &mut DescriptorEncoder,
    (name, help, label): (&str, &str, &str),
    samples: Samples<'_, &ExportedHistogram>,
) -> fmt::Result {
    let mut family =
        encoder.encode_descriptor(name, help, Some(&Unit::Seconds), MetricType::Histogram)?;
    for (value_label, histogram) in samples {
        let labels = [(label, value_label)];
        // The encoder takes each bucket's own count and accumulates them itself.
        let mut below = 0;
        let buckets: Vec<(f64, u64)> = histogram
            .buckets
            .iter()
            .map(|(bound_us, at_most)| {
                let own = at_most.saturating_sub(below);
                below = *at_most;
                (*bound_us as f64 / 1e6, own)
            })
            .collect();
        let mut metric = family.encode_family(&labels)?;
        metric.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            histogram.sum_us / 1e6,
            histogram.count,
            &buckets,
            None,
        )?;
    }
    Ok(())
}

/// A gauge without labels.
fn gauge<T: prometheus_client::encoding::EncodeGaugeValue + Clone + fmt::Debug>(
    encoder: &mut DescriptorEncoder,
    (name, help): (&str, &str),
    value: T,
) -> fmt::Result {
    let family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    ConstGauge::new(value).encode(family)
}

/// A counter without labels (the encoder adds `_total`).
fn counter(encoder: &mut DescriptorEncoder, (name, help): (&str, &str), value: u64) -> fmt::Result {
    let family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    ConstCounter::new(value).encode(family)
}

/// Client requests this node coordinated that were answered with an error, by operation and
/// kind (two labels; nothing before the first failure).
fn request_errors(
    encoder: &mut DescriptorEncoder,
    failed: &[(shoal_stages::event::Operation, &'static str, u64)],
) -> fmt::Result {
    let mut family = encoder.encode_descriptor(
        "shoal_request_errors",
        "Client gets, puts and deletes this node's coordinator answered with an error, by operation and kind (the error's name, as the load tool counts them; a forwarded put's error counts on both nodes). Refusals before the coordinator are not here: a full queue counts in shoal_stage_rejected.",
        None,
        MetricType::Counter,
    )?;
    for &(operation, kind, n) in failed {
        let labels = [("operation", operation.name()), ("kind", kind)];
        ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for NodeMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let stats = self.source.snapshot();
        let e = &mut encoder;
        let stage = |f: fn(&shoal_stages::seda::StageSnapshot) -> u64| -> Samples<'_, u64> {
            stats
                .stages
                .iter()
                .map(|s| (s.name.as_str(), f(s)))
                .collect()
        };
        gauges(
            e,
            (
                "shoal_stage_queue_depth",
                "Events waiting in the stage's queue.",
                "stage",
            ),
            stage(|s| s.queue_depth),
        )?;
        gauges(
            e,
            (
                "shoal_stage_queue_capacity",
                "The stage's queue bound.",
                "stage",
            ),
            stage(|s| s.queue_capacity),
        )?;
        gauges(
            e,
            (
                "shoal_stage_queue_high_water",
                "Deepest the stage's queue has been.",
                "stage",
            ),
            stage(|s| s.queue_high_water),
        )?;
        gauges(
            e,
            (
                "shoal_stage_slots",
                "Most pool workers that serve the stage at once.",
                "stage",
            ),
            stage(|s| s.threads),
        )?;
        gauges(
            e,
            (
                "shoal_stage_busy",
                "Workers running the stage now.",
                "stage",
            ),
            stage(|s| s.busy_threads),
        )?;
        counters(
            e,
            (
                "shoal_stage_enqueued",
                "Events queued for the stage.",
                "stage",
            ),
            stage(|s| s.enqueued),
        )?;
        counters(
            e,
            (
                "shoal_stage_processed",
                "Events the stage handled.",
                "stage",
            ),
            stage(|s| s.processed),
        )?;
        counters(
            e,
            (
                "shoal_stage_rejected",
                "Events refused because the stage's queue was full (Overloaded).",
                "stage",
            ),
            stage(|s| s.rejected),
        )?;
        let exported = self.source.router.exported();
        histograms(
            e,
            (
                "shoal_stage_queue_wait",
                "Time events waited in the stage's queue.",
                "stage",
            ),
            exported
                .iter()
                .map(|(stage, wait, _)| (stage.name(), wait))
                .collect(),
        )?;
        histograms(
            e,
            (
                "shoal_stage_service",
                "Time the stage took per event.",
                "stage",
            ),
            exported
                .iter()
                .map(|(stage, _, service)| (stage.name(), service))
                .collect(),
        )?;
        let operations = self.source.latencies.exported();
        histograms(
            e,
            (
                "shoal_request_duration",
                "Client requests coordinated here, from receipt to reply.",
                "operation",
            ),
            operations.iter().map(|(op, h)| (*op, h)).collect(),
        )?;

        // Hints held for each intended node (an exact count by scanning the hints; a scrape
        // every few seconds is cheap next to the traffic that makes hints). Every other
        // member has a series, 0 when none are held: one that vanished at 0 read as "no data"
        // to an alert, not as "all delivered".
        // A count that failed leaves the family empty ("no data"), never a 0 it did not see.
        let mut hints = self.store.pending_hints().ok();
        if let Some(hints) = hints.as_mut() {
            for member in self.membership.current().members() {
                if member.id != self.source.node {
                    hints.entry(member.id.clone()).or_insert(0);
                }
            }
        }
        let hints = hints.unwrap_or_default();
        gauges(
            e,
            (
                "shoal_hints_held",
                "Hints this node holds for another, by intended node.",
                "target",
            ),
            hints.iter().map(|(node, n)| (node.as_str(), *n)).collect(),
        )?;

        // What the node did since it started, counted as it happened (a trial asked how many
        // hints were handed off, how many read repairs went out and which errors clients got).
        let counts = &self.source.counters;
        counter(
            e,
            (
                "shoal_hints_handed_off",
                "Hints their target acknowledged since this node started (delivered there, deleted here).",
            ),
            counts.hints_handed_off(),
        )?;
        counter(
            e,
            (
                "shoal_read_repair_writes",
                "Read-repair writes this node issued to stale replicas since it started (its own copy included; one a full queue refused also counts in shoal_stage_rejected).",
            ),
            counts.repair_writes(),
        )?;
        request_errors(e, &counts.failed())?;
        let connections = &self.source.connections;
        gauges(
            e,
            (
                "shoal_connections",
                "Open connections: clients (a peer's before its handshake completes too; a Redis door connection from its first command, when it opens its own client connection) and peers (this node's links to them, theirs to it).",
                "kind",
            ),
            vec![("client", connections.clients()), ("peer", connections.peers())],
        )?;

        // The ring as this node has it: its version (equal on every node once a change has
        // spread) and the partitions it owns and stores (a trial asked for the membership in
        // the metrics; replicas held can drift apart after joins and leaves).
        let membership = self.membership.current();
        gauge(
            e,
            (
                "shoal_membership_version",
                "The membership version this node has (the same on every node once a change has spread).",
            ),
            membership.version,
        )?;
        let me = &self.source.node;
        let n = self.replicas;
        let owned = membership.ring().partitions_of(me).len() as u64;
        let stored = membership
            .ring()
            .replicas_held(n)
            .get(me)
            .copied()
            .unwrap_or(0);
        let down = self.peers.down();
        gauges(
            e,
            (
                "shoal_peer_up",
                "1 while this node's failure detector holds the member up (requests go to it), 0 while it holds it down; admin members says why.",
                "peer",
            ),
            membership
                .members()
                .filter(|m| &m.id != me)
                .map(|m| (m.id.as_str(), u64::from(!down.contains(&m.id))))
                .collect(),
        )?;
        // Partition copies the last commit still needs, this node's to send and to receive, and
        // those of its own it parked after repeated failures: a copy parked for long holds
        // every later commit (a trial's 1 MiB values did, showing only as a backlog).
        let pending = membership.pending_transfers(n);
        let sending = pending
            .iter()
            .filter(|t| t.from.as_ref() == Some(me))
            .count();
        let receiving = pending.iter().filter(|t| &t.to == me).count();
        gauges(
            e,
            (
                "shoal_transfers_pending",
                "Partition copies the last commit still needs, by this node's role in them (admin ring lists them).",
                "role",
            ),
            vec![("sending", sending as u64), ("receiving", receiving as u64)],
        )?;
        let parked = self
            .transfers
            .read()
            .iter()
            .filter(|p| p.phase == shoal_stages::wire::TransferProgress::PARKED)
            .count();
        gauge(
            e,
            (
                "shoal_transfers_parked",
                "This node's outgoing partition copies parked after repeated failures (admin ring prints each one's last failure).",
            ),
            parked as u64,
        )?;
        gauges(
            e,
            (
                "shoal_partitions",
                "Partitions of the committed ring this node owns (role owner: first replica) or stores (role replica: on their preference list of N).",
                "role",
            ),
            vec![("owner", owned), ("replica", u64::from(stored))],
        )?;

        gauge(
            e,
            (
                "shoal_storage_writable",
                "1 while storage takes writes; 0 once its journal failed (every write is refused until the node restarts; admin stats says why).",
            ),
            u64::from(stats.storage_failure.is_none()),
        )?;

        let aae = self.source.aae.report();
        gauge(
            e,
            (
                "shoal_anti_entropy_enabled",
                "1 when anti-entropy exchanges run.",
            ),
            u64::from(aae.enabled),
        )?;
        for (name, help, value) in [
            (
                "shoal_anti_entropy_exchanges",
                "Exchanges completed.",
                aae.exchanges,
            ),
            (
                "shoal_anti_entropy_in_sync_exchanges",
                "Exchanges that found the roots equal at once.",
                aae.in_sync_exchanges,
            ),
            (
                "shoal_anti_entropy_keys_sent",
                "Objects sent to peers by exchanges.",
                aae.keys_sent,
            ),
            (
                "shoal_anti_entropy_keys_received",
                "Objects received from peers by exchanges.",
                aae.keys_received,
            ),
            (
                "shoal_anti_entropy_bytes",
                "Bytes of exchange messages sent and received as initiator.",
                aae.bytes_exchanged,
            ),
            (
                "shoal_anti_entropy_rebuilds",
                "Tree rebuilds completed.",
                aae.rebuilds,
            ),
            (
                "shoal_anti_entropy_tombstones_purged",
                "Tombstones purged.",
                aae.tombstones_purged,
            ),
        ] {
            counter(e, (name, help), value)?;
        }

        let controller = &stats.controller;
        gauge(
            e,
            (
                "shoal_controller_enabled",
                "1 when the resource controller sets the background rates.",
            ),
            u64::from(controller.enabled),
        )?;
        gauge(
            e,
            (
                "shoal_controller_target_seconds",
                "The foreground latency target of the watched percentile.",
            ),
            controller.target_ms as f64 / 1e3,
        )?;
        gauge(
            e,
            (
                "shoal_controller_target_percentile",
                "The foreground latency percentile the controller watches.",
            ),
            controller.target_percentile_milli as f64 / 1e3,
        )?;
        gauge(
            e,
            (
                "shoal_controller_signal_seconds",
                "The watched percentile over the last window.",
            ),
            controller.signal_us as f64 / 1e6,
        )?;
        gauge(
            e,
            (
                "shoal_controller_quiet_signal_seconds",
                "The foreground's own level: the signal over the last window whose background \
                 work stayed at the floor (0: none recent).",
            ),
            controller.quiet_us as f64 / 1e6,
        )?;
        gauge(
            e,
            (
                "shoal_controller_budget_per_second",
                "The total background budget, units per second.",
            ),
            controller.budget_per_sec,
        )?;
        let background = &stats.background;
        // An unlimited stage (no rate) is exported as +Inf.
        gauges(
            e,
            (
                "shoal_background_rate_limit_per_second",
                "Units per second a background stage may use now.",
                "stage",
            ),
            background
                .iter()
                .map(|b| {
                    let rate = b.rate_per_sec.map_or(f64::INFINITY, |r| r as f64);
                    (b.name.as_str(), rate)
                })
                .collect(),
        )?;
        gauges(
            e,
            (
                "shoal_background_used_per_second",
                "Units per second a background stage used over the controller's last period.",
                "stage",
            ),
            background
                .iter()
                .map(|b| (b.name.as_str(), b.used_per_sec))
                .collect(),
        )?;
        gauges(
            e,
            (
                "shoal_background_backlog",
                "Work a background stage has waiting.",
                "stage",
            ),
            background
                .iter()
                .map(|b| (b.name.as_str(), b.backlog))
                .collect(),
        )?;
        gauges(
            e,
            (
                "shoal_background_pinned",
                "1 when an operator pinned the stage's rate (admin throttle).",
                "stage",
            ),
            background
                .iter()
                .map(|b| (b.name.as_str(), u64::from(b.mode == GateMode::Pinned)))
                .collect(),
        )?;
        counters(
            e,
            (
                "shoal_background_dropped",
                "Background work dropped because too much was waiting.",
                "stage",
            ),
            background
                .iter()
                .map(|b| (b.name.as_str(), b.dropped))
                .collect(),
        )?;
        Ok(())
    }
}
