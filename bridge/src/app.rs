//! Start-up and shutdown, as a function tests can call:
//! [`Application::build`] opens the store, loads the mappings, starts the
//! committer, the RabbitMQ source and the HTTP server (port 0 works), and
//! [`Application::run_until`] runs them until a shutdown signal, then
//! drains: the source stops taking messages, everything received is
//! committed and acknowledged, and only then the connection closes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{App, HttpResponse, HttpServer, web};
use kiungo_mappings::{LoadErrors, LoadOptions, MappingSet};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::config::Config;
use crate::ingest::http::IngestState;
use crate::ingest::{Committer, CommitterHandle, Limits, run_mapper};
use crate::store::{Store, StoreError};
use kiungo_connectors::rabbitmq::{self, SourceState};

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The mappings do not load (each problem with its location).
    #[error("mappings: {0}")]
    Mappings(#[from] LoadErrors),
    /// `KIUNGO_PSEUDONYM_KEY` is malformed.
    #[error("{0}")]
    PseudonymKey(String),
    /// The store cannot be opened or migrated.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// A destination cannot be set up.
    #[error("{0}")]
    Delivery(#[from] crate::delivery::DeliveryStartError),
    /// The admin tokens are unusable (each problem with its place).
    #[error("{}", .0.join("; "))]
    Admin(Vec<String>),
    /// Span export cannot start.
    #[error("{0}")]
    Telemetry(#[from] crate::telemetry::StartError),
    /// The HTTP address cannot be bound.
    #[error("http.listen {addr}: {error}")]
    Bind {
        /// The address.
        addr: String,
        /// Why.
        error: std::io::Error,
    },
}

/// The HTTP server's worker threads (`http.max_connections` is split
/// between them).
pub const HTTP_WORKERS: usize = 2;

/// A running service.
pub struct Application {
    http_addr: SocketAddr,
    store: Store,
    committer: CommitterHandle,
    source_state: watch::Receiver<SourceState>,
    shutdown: watch::Sender<bool>,
    server: actix_web::dev::ServerHandle,
    source: Option<tokio::task::JoinHandle<Vec<lapin::Connection>>>,
    mapper: Option<tokio::task::JoinHandle<()>>,
    committer_task: tokio::task::JoinHandle<()>,
    retention: tokio::task::JoinHandle<()>,
    delivery: Vec<tokio::task::JoinHandle<()>>,
    telemetry: Option<crate::telemetry::Export>,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("http_addr", &self.http_addr)
            .finish_non_exhaustive()
    }
}

impl Application {
    /// Starts everything; returns once the HTTP port is bound. No spans
    /// are exported (see [`Self::build_traced`]).
    pub async fn build(config: Config) -> Result<Self, StartError> {
        Self::build_traced(config, None).await
    }

    /// [`Self::build`], exporting spans as `otel` says: `kiungo run`
    /// reads it from the `OTEL_*` environment variables
    /// ([`crate::telemetry::OtlpSettings::from_env`]), tests build it;
    /// off when `None`.
    pub async fn build_traced(
        mut config: Config,
        otel: Option<crate::telemetry::OtlpSettings>,
    ) -> Result<Self, StartError> {
        crate::tls::install_crypto_provider();
        if let (Some(limit), Some(budget)) = (config.memory_limit, config.apply_memory_limit()) {
            info!(
                memory_limit = %limit,
                prefetch = budget.prefetch,
                max_events = budget.max_events,
                "memory_limit sizes the events held in flight: rabbitmq.prefetch per queue and ingest.max_events"
            );
        }
        let key = config.pseudonym_key().map_err(StartError::PseudonymKey)?;
        if key.is_none() {
            warn!(
                "no pseudonym key (KIUNGO_PSEUDONYM_KEY or pseudonym_key_file): events whose mapping calls pseudonym() will be parked"
            );
        }
        let mappings = Arc::new(MappingSet::load_dir(
            &config.mappings,
            LoadOptions {
                pseudonym_key: key,
                calendar: config.dhis2_calendar(),
                ..LoadOptions::default()
            },
        )?);
        info!(mappings = mappings.mappings().len(), dir = %config.mappings.display(), "mappings loaded");
        let tokens = config.admin.tokens().map_err(StartError::Admin)?;
        if tokens.is_empty() {
            warn!(
                "no admin tokens (admin.tokens): the admin API and dashboard will refuse every request"
            );
        }
        let m = crate::metrics::metrics();
        m.know_sources(mappings.mappings().iter().map(|m| m.source.clone()));
        m.know_mappings(mappings.mappings().iter().map(|m| m.id.clone()));
        if let Some(r) = &config.rabbitmq {
            m.know_sources(r.queues.iter().map(|q| q.source.clone()));
        }
        let store = Store::open(&config.store).await?;
        info!(backend = ?store.backend(), "store open");
        let telemetry = crate::telemetry::start(otel.as_ref())?;
        let wake = Arc::new(tokio::sync::Notify::new());
        let (committer, committer_task) =
            Committer::spawn(store.clone(), config.ingest, Some(wake.clone()));
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (state_tx, source_state) = watch::channel(SourceState::default());

        let (source, mapper) = match config.rabbitmq.clone() {
            Some(rabbit) => {
                let limits = Limits {
                    max_bytes: rabbit.max_message_bytes,
                };
                // Small: the broker's prefetch window is the real buffer.
                let (tx, rx) = mpsc::channel(64);
                let source = tokio::spawn(rabbitmq::run(rabbit, tx, state_tx, shutdown_rx.clone()));
                let mapper =
                    tokio::spawn(run_mapper(mappings.clone(), limits, rx, committer.clone()));
                (Some(source), Some(mapper))
            }
            None => {
                info!("no rabbitmq configured: HTTP ingest only");
                (None, None)
            }
        };

        for warning in crate::ingest::auth::start_warnings(
            config.http.ingest.auth,
            &tokens,
            &config.http.listen,
        ) {
            warn!("{warning}");
        }
        let ingest_state = web::Data::new(IngestState::new(
            &config.http,
            mappings.clone(),
            committer.clone(),
            tokens.clone(),
            Arc::new(crate::delivery::retry::SystemClock),
        ));
        let admin_state = web::Data::new(crate::admin::AdminState {
            store: store.clone(),
            mappings: mappings.clone(),
            limits: Limits {
                max_bytes: config.http.max_body_bytes.max(64 * 1024 * 1024),
            },
            started: std::time::Instant::now(),
            destinations: [
                config.destinations.fhir.as_ref().map(|_| "fhir"),
                config.destinations.dhis2.as_ref().map(|_| "dhis2"),
            ]
            .into_iter()
            .flatten()
            .collect(),
            queues: config
                .rabbitmq
                .iter()
                .flat_map(|r| r.queues.iter().map(|q| q.name.clone()))
                .collect(),
            feedback: config.feedback.is_some(),
            cache: Arc::new(crate::admin::Caches {
                ttl: config.http.admin_cache,
                ..crate::admin::Caches::default()
            }),
            // Built like the delivery worker's; a config it refuses
            // stops the start-up there with its message.
            dhis2: config
                .destinations
                .dhis2
                .as_ref()
                .and_then(|d| kiungo_connectors::dhis2::Dhis2Client::new(d.server.clone()).ok())
                .map(Arc::new),
        });
        let tokens = web::Data::new(tokens);
        let health = web::Data::new(Health {
            store: store.clone(),
            source: source_state.clone(),
            amqp: source.is_some(),
        });
        let server = HttpServer::new(move || {
            App::new()
                .app_data(ingest_state.clone())
                .app_data(health.clone())
                .app_data(admin_state.clone())
                .app_data(tokens.clone())
                .configure(crate::ingest::http::configure)
                .configure(crate::admin::configure)
                .route("/healthz", web::get().to(healthz))
                .route("/readyz", web::get().to(readyz))
        })
        .workers(HTTP_WORKERS)
        .max_connections((config.http.max_connections / HTTP_WORKERS).max(1))
        .client_request_timeout(config.http.client_request_timeout)
        .client_disconnect_timeout(config.http.client_disconnect_timeout)
        .disable_signals()
        .shutdown_timeout(10)
        .bind(&config.http.listen)
        .map_err(|error| StartError::Bind {
            addr: config.http.listen.clone(),
            error,
        })?;
        let http_addr = server
            .addrs()
            .first()
            .copied()
            .ok_or_else(|| StartError::Bind {
                addr: config.http.listen.clone(),
                error: std::io::Error::other("no address bound"),
            })?;
        let server = server.run();
        let handle = server.handle();
        tokio::spawn(server);
        info!(%http_addr, "http listening");

        let mut delivery =
            crate::delivery::start(&config.destinations, &mappings, &store, &shutdown_rx, wake)?;
        if let Some(f) = config.feedback.clone() {
            let url = f
                .url
                .clone()
                .or_else(|| config.rabbitmq.as_ref().map(|r| r.url.clone()))
                .unwrap_or_default();
            info!(exchange = %f.exchange, "feedback to apps started");
            delivery.push(tokio::spawn(crate::feedback::run(
                f,
                url,
                store.clone(),
                shutdown_rx.clone(),
            )));
        }
        let mut probed: Vec<(String, String)> = Vec::new();
        if let Some(r) = &config.rabbitmq {
            // Each probed queue with the consumed queue whose consumer
            // declares it (a parking queue is declared with its queue).
            probed = r
                .queues
                .iter()
                .flat_map(|q| {
                    let parking =
                        (q.kind == rabbitmq::QueueKind::Quorum).then(|| q.overflow_queue());
                    std::iter::once(q.name.clone())
                        .chain(parking)
                        .map(|name| (q.name.clone(), name))
                })
                .collect();
            tokio::spawn(queue_lag_loop(
                r.url.clone(),
                probed.clone(),
                source_state.clone(),
                shutdown_rx.clone(),
            ));
        }
        tokio::spawn(crate::signals::summary_loop(
            config.log.summary_interval,
            probed.into_iter().map(|(_, probed)| probed).collect(),
            config.rabbitmq.is_some().then(|| source_state.clone()),
            shutdown_rx.clone(),
        ));
        let retention = tokio::spawn(retention_loop(
            store.clone(),
            config.store.payload_retention,
            shutdown_rx,
        ));
        Ok(Self {
            http_addr,
            store,
            committer,
            source_state,
            shutdown,
            server: handle,
            source,
            mapper,
            committer_task,
            retention,
            delivery,
            telemetry,
        })
    }

    /// The bound HTTP address.
    pub const fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The store.
    pub const fn store(&self) -> &Store {
        &self.store
    }

    /// The committer's counters.
    pub fn counters(&self) -> Arc<crate::ingest::Counters> {
        self.committer.counters.clone()
    }

    /// The RabbitMQ source's state.
    pub fn source_state(&self) -> SourceState {
        self.source_state.borrow().clone()
    }

    /// Runs until `signal` resolves, then drains and stops.
    pub async fn run_until(self, signal: impl std::future::Future<Output = ()>) {
        signal.await;
        info!("shutting down: draining");
        let _ = self.shutdown.send(true);
        // Each queue's session stops at the signal, even one stuck
        // connecting; the bound is a last resort against a dead connection.
        let connections = match self.source {
            Some(s) => match tokio::time::timeout(Duration::from_secs(15), s).await {
                Ok(Ok(c)) => c,
                Ok(Err(_)) => Vec::new(),
                Err(_) => {
                    warn!("rabbitmq source did not stop within 15 s; its connections are dropped");
                    Vec::new()
                }
            },
            None => Vec::new(),
        };
        if let Some(m) = self.mapper
            && tokio::time::timeout(Duration::from_secs(30), m)
                .await
                .is_err()
        {
            warn!("mapper did not finish within 30 s");
        }
        self.server.stop(true).await;
        drop(self.committer);
        if tokio::time::timeout(Duration::from_secs(30), self.committer_task)
            .await
            .is_err()
        {
            warn!(
                "committer did not finish within 30 s; unacknowledged messages will be redelivered"
            );
        }
        // A connection whose I/O loop died may never answer a close.
        let closes = connections.into_iter().map(|conn| async move {
            let _ = tokio::time::timeout(
                Duration::from_secs(5),
                conn.close(200, "kiungo shutting down".into()),
            )
            .await;
        });
        futures_util::future::join_all(closes).await;
        self.retention.abort();
        for task in self.delivery {
            // Workers finish the request in flight and stop; a claim left
            // behind expires with its lease.
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
        self.store.close().await;
        if let Some(t) = self.telemetry {
            t.shutdown().await;
        }
        info!("stopped");
    }
}

/// What the probes read.
struct Health {
    store: Store,
    source: watch::Receiver<SourceState>,
    amqp: bool,
}

/// Alive, unless a RabbitMQ queue is wedged: a message the client
/// library cannot read keeps coming back and nothing behind it is
/// consumed. A restart (Kubernetes' liveness probe) starts the count
/// again; on a quorum queue the broker's delivery limit moves the message
/// away first.
async fn healthz(health: web::Data<Health>) -> HttpResponse {
    let wedged = health.source.borrow().wedged();
    if wedged.is_empty() {
        HttpResponse::Ok().json(serde_json::json!({"status": "alive"}))
    } else {
        HttpResponse::ServiceUnavailable()
            .json(serde_json::json!({"status": "wedged", "wedged_queues": wedged}))
    }
}

async fn readyz(health: web::Data<Health>) -> HttpResponse {
    let store = health.store.ping().await.is_ok();
    let state = health.source.borrow().clone();
    let broker = !health.amqp || state.connected;
    let body = serde_json::json!({
        "store": if store { "ok" } else { "unreachable" },
        "broker": if !health.amqp { "not configured" } else if state.connected { "connected" } else { "disconnected" },
        "mappings": "loaded",
    });
    if store && broker {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

async fn retention_loop(store: Store, retention: Duration, mut shutdown: watch::Receiver<bool>) {
    let every = (retention / 10).clamp(Duration::from_secs(60), Duration::from_secs(3600));
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
        match store
            .purge_delivered(retention, crate::store::now_ms())
            .await
        {
            Ok(r) if r.payloads + r.bundles + r.dead_letters > 0 => info!(
                payloads = r.payloads,
                bundles = r.bundles,
                dead_letters = r.dead_letters,
                "purged delivered payloads"
            ),
            Ok(_) => {}
            Err(e) => warn!(error = %e, "retention purge failed; will retry"),
        }
    }
}

/// The probed queues whose consumer has declared them by now (once
/// declared, a queue stays probed: a consumer reconnecting does not
/// remove it), in config order.
fn declared_queues(
    state: &SourceState,
    queues: &[(String, String)],
    declared: &mut std::collections::HashSet<String>,
) -> Vec<String> {
    for (consumed, _) in queues {
        if state.queues.get(consumed).is_some_and(|q| q.connected) {
            declared.insert(consumed.clone());
        }
    }
    queues
        .iter()
        .filter(|(consumed, _)| declared.contains(consumed))
        .map(|(_, probed)| probed.clone())
        .collect()
}

/// Reads the consumed queues' depths every 15 s into the
/// `kiungo_queue_ready_messages` gauge (queue lag). `queues` pairs each
/// probed queue with the consumed queue whose consumer declares it: a
/// queue is probed only once its consumer has declared it, so that a
/// first start on a fresh broker does not ask for queues that do not
/// exist yet (the broker answers `NOT_FOUND` and closes the channel,
/// which the client logs as an error).
async fn queue_lag_loop(
    url: String,
    queues: Vec<(String, String)>,
    source: watch::Receiver<SourceState>,
    mut shutdown: watch::Receiver<bool>,
) {
    use kiungo_connectors::rabbitmq::QueueProbe;
    let mut declared: std::collections::HashSet<String> = std::collections::HashSet::new();
    let m = crate::metrics::metrics();
    let mut probe: Option<QueueProbe> = None;
    loop {
        let due = declared_queues(&source.borrow(), &queues, &mut declared);
        for q in &due {
            // A passive declare of a missing queue (deleted since) closes
            // the channel: reconnect for the next one.
            if probe.as_ref().is_none_or(|p| !p.is_connected()) {
                probe = QueueProbe::connect(&url).await.ok();
            }
            let Some(p) = &probe else { break };
            match p.ready(q).await {
                Ok(n) => {
                    m.queue_ready
                        .get_or_create(&crate::metrics::QueueLabels { queue: q.clone() })
                        .set(i64::from(n));
                }
                Err(e) => {
                    tracing::debug!(error = %e, queue = %q, "queue depth unavailable");
                    if let Some(p) = probe.take() {
                        p.close().await;
                    }
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(15)) => {}
            _ = shutdown.changed() => break,
        }
    }
    if let Some(p) = probe {
        p.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiungo_connectors::rabbitmq::QueueState;

    fn pairs() -> Vec<(String, String)> {
        [
            ("kiungo.cht", "kiungo.cht"),
            ("kiungo.cht", "kiungo.cht.overflow"),
            ("kiungo.kobo", "kiungo.kobo"),
        ]
        .into_iter()
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .collect()
    }

    fn state(connected: &[&str]) -> SourceState {
        let mut s = SourceState::default();
        for q in ["kiungo.cht", "kiungo.kobo"] {
            s.queues.insert(
                q.to_owned(),
                QueueState {
                    connected: connected.contains(&q),
                    ..QueueState::default()
                },
            );
        }
        s
    }

    #[test]
    fn queues_are_probed_only_once_their_consumer_declared_them() {
        let mut declared = std::collections::HashSet::new();
        // A fresh start: no consumer is up, no queue may exist yet.
        assert!(declared_queues(&state(&[]), &pairs(), &mut declared).is_empty());
        // The cht consumer declared its queue and its parking queue.
        assert_eq!(
            declared_queues(&state(&["kiungo.cht"]), &pairs(), &mut declared),
            vec!["kiungo.cht", "kiungo.cht.overflow"]
        );
        // Its reconnecting does not make the queues disappear.
        assert_eq!(
            declared_queues(&state(&["kiungo.kobo"]), &pairs(), &mut declared),
            vec!["kiungo.cht", "kiungo.cht.overflow", "kiungo.kobo"]
        );
    }
}
