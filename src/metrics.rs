//! `/metrics`: the node's statistics in the Prometheus text format (version 0.0.4), served on
//! `[metrics] listen` by one plain thread (tiny_http, no async runtime). Everything comes from
//! what `admin stats`, `admin throttle`, `admin aae` and `admin members` read — the stages'
//! counters and histograms, the client latencies, the gates and the controller's state, the
//! anti-entropy report and the hints the store holds — rendered on each scrape by
//! prometheus-client's encoder, so the format is the crate's, not ours.
//!
//! Names follow Prometheus conventions: a `shoal_` prefix, base units (seconds), `_total` on
//! counters, one label per dimension (`shoal_stage_queue_depth{stage="storage"}`).

mod collect;

pub use collect::NodeMetrics;
use prometheus_client::registry::Registry;
use shoal_stages::storage::Store;
use shoal_stages::wire::same_secret;
use slog::{warn, Logger};
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
        metrics: NodeMetrics,
        token: Option<String>,
        logger: Logger,
    ) -> Result<MetricsServer, std::io::Error> {
        let server = tiny_http::Server::http(listen).map_err(std::io::Error::other)?;
        let addr = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| std::io::Error::other("the metrics listener has no IP address"))?;
        let mut registry = Registry::default();
        let health = (
            metrics.store.clone(),
            Arc::clone(&metrics.source.intake_failed),
        );
        registry.register_collector(Box::new(metrics));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("metrics".into())
                .spawn(move || {
                    let site = Site {
                        registry: &registry,
                        token: token.as_deref(),
                        store: &health.0,
                        intake_failed: &health.1,
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
    /// For `/health`: the intake's thread panicked.
    intake_failed: &'a AtomicBool,
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
                let (status, body) = health(site.store, site.intake_failed);
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
fn health(store: &Store, intake_failed: &AtomicBool) -> (u16, String) {
    if intake_failed.load(Ordering::Acquire) {
        return (
            503,
            "unhealthy: the intake thread stopped (it panicked; the node's log says where): the \
             node answers no connection and is stopping\n"
                .into(),
        );
    }
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

#[cfg(test)]
mod tests {
    use super::health;
    use shoal_stages::storage::{MemoryEngine, Store};
    use shoal_stages::NodeId;
    use std::sync::atomic::AtomicBool;

    /// Goal: `/health` answers 200 while storage takes writes and 503 once a
    /// journal flush failed (the node then refuses every write but still serves reads, so a
    /// probe must be able to tell).
    #[test]
    fn health_turns_unhealthy_once_a_journal_flush_failed() {
        let engine = MemoryEngine::new();
        let store = Store::with_engine(engine.clone(), &NodeId::new("n1"), 8, 0).expect("opens");
        let intake_failed = AtomicBool::new(false);
        assert_eq!(health(&store, &intake_failed), (200, "ok\n".to_string()));
        engine.fail_flushes(1);
        assert!(store.persist().is_err(), "the injected failure");
        let (status, body) = health(&store, &intake_failed);
        assert_eq!(status, 503);
        assert!(body.contains("storage refuses writes"), "{body}");
    }

    /// Goal: `/health` answers 503 once the intake's thread panicked (a trial's node kept
    /// answering "ok" with no thread left to read its connections).
    #[test]
    fn health_turns_unhealthy_once_the_intake_thread_failed() {
        let store =
            Store::with_engine(MemoryEngine::new(), &NodeId::new("n1"), 8, 0).expect("opens");
        let intake_failed = AtomicBool::new(true);
        let (status, body) = health(&store, &intake_failed);
        assert_eq!(status, 503);
        assert!(body.contains("intake thread stopped"), "{body}");
    }
}
