//! `/metrics`: the node's statistics in the Prometheus text format (version 0.0.4), served on
//! `[metrics] listen` by one plain thread (tiny_http, no async runtime). Everything comes from
//! what `admin stats`, `admin throttle`, `admin aae` and `admin members` read — the stages'
//! counters and histograms, the client latencies, the gates and the controller's state, the
//! anti-entropy report and the hints the store holds — rendered on each scrape by
//! prometheus-client's encoder, so the format is the crate's, not ours.
//!
//! Names follow Prometheus conventions: a `shoal_` prefix, base units (seconds), `_total` on
//! counters, one label per dimension (`shoal_stage_queue_depth{stage="storage"}`).

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use shoal_stages::intake::StatsSource;
use shoal_stages::seda::{ExportedHistogram, GateMode};
use shoal_stages::storage::Store;
use shoal_stages::wire::same_secret;
use slog::{warn, Logger};
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// How often the server thread looks at its stop flag while no scrape comes.
const STOP_CHECK: Duration = Duration::from_millis(200);

/// The running `/metrics` endpoint.
pub struct MetricsServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Binds `listen` and serves scrapes on a thread of its own until [`MetricsServer::stop`].
    /// With a token (`[security] client_token`), a scrape must send `Authorization: Bearer
    /// TOKEN` (Prometheus's `authorization` setting); others get 401.
    pub fn start(
        listen: SocketAddr,
        (source, token): (StatsSource, Option<String>),
        store: Store,
        logger: Logger,
    ) -> Result<MetricsServer, std::io::Error> {
        let server = tiny_http::Server::http(listen).map_err(std::io::Error::other)?;
        let addr = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| std::io::Error::other("the metrics listener has no IP address"))?;
        let mut registry = Registry::default();
        let health = store.clone();
        registry.register_collector(Box::new(NodeMetrics { source, store }));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("metrics".into())
                .spawn(move || {
                    let site = Site {
                        registry: &registry,
                        token: token.as_deref(),
                        store: &health,
                    };
                    serve(&server, &site, &stop, &logger)
                })?
        };
        Ok(MetricsServer {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// Where it listens (the bound port when the config said 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops the thread and waits for it.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What the server answers from.
struct Site<'a> {
    registry: &'a Registry,
    /// `[security] client_token`: every path needs it when set.
    token: Option<&'a str>,
    /// For `/health`.
    store: &'a Store,
}

/// The server loop: `GET /metrics` is answered with the text, `GET /health` with 200 `ok`
/// or, while storage refuses writes, 503 and why (a load balancer's or supervisor's probe:
/// such a node still answers reads and scrapes, so nothing else about it looks wrong);
/// anything else with 404 or 405.
fn serve(server: &tiny_http::Server, site: &Site<'_>, stop: &AtomicBool, logger: &Logger) {
    let (registry, token) = (site.registry, site.token);
    while !stop.load(Ordering::Relaxed) {
        let request = match server.recv_timeout(STOP_CHECK) {
            Ok(Some(request)) => request,
            Ok(None) => continue,
            Err(e) => {
                warn!(logger, "metrics listener failed"; "error" => %e);
                std::thread::sleep(STOP_CHECK);
                continue;
            }
        };
        let path = request.url().split('?').next().unwrap_or("");
        let authorized = token.is_none_or(|token| {
            request.headers().iter().any(|header| {
                header.field.equiv("Authorization")
                    && header
                        .value
                        .as_str()
                        .strip_prefix("Bearer ")
                        .is_some_and(|given| same_secret(token.as_bytes(), given.as_bytes()))
            })
        });
        let response = match (request.method(), path) {
            _ if !authorized => text_response(
                401,
                "this node requires its client token: Authorization: Bearer TOKEN\n".into(),
                PLAIN,
            ),
            (tiny_http::Method::Get, "/metrics") => {
                let mut text = String::new();
                match prometheus_client::encoding::prometheus_text::encode(&mut text, registry) {
                    Ok(()) => text_response(200, text, CONTENT_TYPE),
                    Err(_) => text_response(500, "encoding the metrics failed\n".into(), PLAIN),
                }
            }
            (tiny_http::Method::Get, "/health") => {
                let (status, body) = health(site.store);
                text_response(status, body, PLAIN)
            }
            (tiny_http::Method::Get, _) => text_response(
                404,
                "not found: metrics are at /metrics, health at /health\n".into(),
                PLAIN,
            ),
            _ => text_response(
                405,
                "only GET /metrics and GET /health are served\n".into(),
                PLAIN,
            ),
        };
        if let Err(e) = request.respond(response) {
            warn!(logger, "answering a metrics scrape failed"; "error" => %e);
        }
    }
}

/// `GET /health`'s status and body. The body names the state, not the error: that carries
/// a path of the data directory, and `admin stats` and the log have it.
fn health(store: &Store) -> (u16, String) {
    match store.failure() {
        None => (200, "ok\n".into()),
        Some(_) => (
            503,
            "unhealthy: storage refuses writes until the node restarts (its journal could not \
             be written or flushed; `shoal admin stats` and the node's log say why)\n"
                .into(),
        ),
    }
}

const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
const PLAIN: &str = "text/plain; charset=utf-8";

fn text_response(
    status: u16,
    body: String,
    content_type: &str,
) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
    let response = tiny_http::Response::from_string(body).with_status_code(status);
    match tiny_http::Header::from_bytes(&b"Content-Type"[..], content_type.as_bytes()) {
        Ok(header) => response.with_header(header),
        Err(()) => response,
    }
}

/// What a scrape reads.
struct NodeMetrics {
    source: StatsSource,
    store: Store,
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

/// A gauge family with one label.
fn gauges<T: prometheus_client::encoding::EncodeGaugeValue + Clone + fmt::Debug>(
    encoder: &mut DescriptorEncoder,
    (name, help, label): (&str, &str, &str),
    samples: Samples<'_, T>,
) -> fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (value_label, value) in samples {
        let labels = [(label, value_label)];
        ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A counter family with one label (the encoder adds `_total`).
fn counters(
    encoder: &mut DescriptorEncoder,
    (name, help, label): (&str, &str, &str),
    samples: Samples<'_, u64>,
) -> fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (value_label, value) in samples {
        let labels = [(label, value_label)];
        ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
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
        // every few seconds is cheap next to the traffic that makes hints).
        let hints = self.store.pending_hints().unwrap_or_default();
        gauges(
            e,
            (
                "shoal_hints_held",
                "Hints this node holds for another, by intended node.",
                "target",
            ),
            hints.iter().map(|(node, n)| (node.as_str(), *n)).collect(),
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

#[cfg(test)]
mod tests {
    use super::health;
    use shoal_stages::storage::{MemoryEngine, Store};
    use shoal_stages::NodeId;

    /// Goal: `/health` answers 200 while storage takes writes and 503 once a
    /// journal flush failed (the node then refuses every write but still serves reads, so a
    /// probe must be able to tell).
    #[test]
    fn health_turns_unhealthy_once_a_journal_flush_failed() {
        let engine = MemoryEngine::new();
        let store = Store::with_engine(engine.clone(), &NodeId::new("n1"), 8, 0).expect("opens");
        assert_eq!(health(&store), (200, "ok\n".to_string()));
        engine.fail_flushes(1);
        assert!(store.persist().is_err(), "the injected failure");
        let (status, body) = health(&store);
        assert_eq!(status, 503);
        assert!(body.contains("storage refuses writes"), "{body}");
    }
}
