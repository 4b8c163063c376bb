//! Starting the delivery workers from the config.

use std::sync::Arc;

use kiungo_connectors::dhis2::{Dhis2Client, References};
use kiungo_connectors::fhir::FhirClient;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::circuit::Circuit;
use super::config::DestinationsConfig;
use super::retry::SystemClock;
use super::sinks::Dhis2Sink;
use super::{CompletenessWorker, DataSetCache, Dhis2Worker, FhirWorker};
use crate::store::Store;

/// Why delivery could not start.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryStartError {
    /// A destination's connection settings are unusable.
    #[error("destinations.{destination}: {error}")]
    Config {
        /// `fhir` or `dhis2`.
        destination: &'static str,
        /// Why.
        error: kiungo_connectors::ConfigError,
    },
}

/// Starts a worker per configured destination; they stop when `shutdown`
/// turns true. The DHIS2 preflight runs in the background at start: a
/// DHIS2 that is down must not keep ingest from starting. It checks the
/// references `mappings` name statically, then those found in stored
/// values.
pub fn start(
    config: &DestinationsConfig,
    mappings: &kiungo_mappings::MappingSet,
    store: &Store,
    shutdown: &watch::Receiver<bool>,
    wake: Arc<tokio::sync::Notify>,
) -> Result<Vec<JoinHandle<()>>, DeliveryStartError> {
    let mut tasks = Vec::new();
    let idle = std::time::Duration::from_millis(200);
    if let Some(f) = &config.fhir {
        let client =
            FhirClient::new(f.server.clone()).map_err(|error| DeliveryStartError::Config {
                destination: "fhir",
                error,
            })?;
        let worker = FhirWorker {
            store: store.clone(),
            destination: client,
            retry: f.retry,
            circuit: Circuit::new(f.circuit.failures, f.circuit.cool_down),
            clock: Arc::new(SystemClock),
            batch: f.concurrency,
            per_transaction: f.events_per_transaction.max(1),
            lease: f.lease,
            withdraw: f.withdraw,
            idle,
            wake: Some(wake),
        };
        info!("fhir delivery started");
        let rx = shutdown.clone();
        tasks.push(tokio::spawn(async move { worker.run(rx).await }));
    }
    if let Some(d) = &config.dhis2 {
        let client =
            Dhis2Client::new(d.server.clone()).map_err(|error| DeliveryStartError::Config {
                destination: "dhis2",
                error,
            })?;
        let sink = Dhis2Sink::new(client, d.metadata_refresh);
        let circuit = Arc::new(Circuit::new(d.circuit.failures, d.circuit.cool_down));
        let worker = Arc::new(Dhis2Worker {
            store: store.clone(),
            destination: sink,
            retry: d.retry,
            circuit: circuit.clone(),
            clock: Arc::new(SystemClock),
            batch: i64::try_from(d.server.batch_size).unwrap_or(1000),
            delay: d.push_delay,
            max_delay: d.max_push_delay,
            lease: d.lease,
            idle,
            completeness: !d.completeness.is_empty(),
        });
        if d.preflight {
            let (store, w, rx) = (store.clone(), worker.clone(), shutdown.clone());
            let rules = Arc::new(mappings.static_dhis2_rules());
            let calendar = d.calendar;
            let completeness = Arc::new(d.completeness.clone());
            tokio::spawn(async move {
                match store.referenced_metadata().await {
                    Ok([des, ous, cocs, aocs]) => {
                        let refs = Arc::new(References {
                            data_elements: des.into_iter().collect(),
                            org_units: ous.into_iter().collect(),
                            category_option_combos: cocs.into_iter().collect(),
                            attribute_option_combos: aocs.into_iter().collect(),
                        });
                        let retry = w.retry;
                        let check = || {
                            let (w, rules, refs, completeness) =
                                (w.clone(), rules.clone(), refs.clone(), completeness.clone());
                            async move {
                                let static_report = w
                                    .destination
                                    .static_check(&rules, calendar, &completeness)
                                    .await?;
                                let refused = static_report.problems.iter().any(|p| {
                                    p.kind == super::static_preflight::ProblemKind::Credentials
                                });
                                // With refused credentials the stored
                                // references cannot be checked either.
                                let stored = if refused {
                                    kiungo_connectors::dhis2::PreflightReport::default()
                                } else {
                                    w.destination.check(&refs).await?
                                };
                                Ok(super::preflight::Answer {
                                    stored,
                                    static_report: Some(static_report),
                                })
                            }
                        };
                        super::preflight::until_answered(check, retry, Arc::new(SystemClock), rx)
                            .await;
                    }
                    Err(e) => warn!(error = %e, "dhis2 preflight: cannot read the store"),
                }
            });
        }
        let (store2, every, mut rx) = (store.clone(), d.resync_interval, shutdown.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(every) => {}
                    _ = rx.changed() => return,
                }
                match store2.remark_all_totals(crate::store::now_ms()).await {
                    Ok(n) => info!(totals = n, "dhis2 re-sync: every total marked for a push"),
                    Err(e) => warn!(error = %e, "dhis2 re-sync failed; next time"),
                }
            }
        }));
        if let Some(schedule) = d.reconcile.clone() {
            let client =
                Dhis2Client::new(d.server.clone()).map_err(|error| DeliveryStartError::Config {
                    destination: "dhis2",
                    error,
                })?;
            let (store, calendar, rx) = (store.clone(), d.calendar, shutdown.clone());
            tasks.push(tokio::spawn(crate::reconcile::schedule::run(
                client, store, schedule, calendar, rx,
            )));
        }
        if !d.completeness.is_empty() {
            let client =
                Dhis2Client::new(d.server.clone()).map_err(|error| DeliveryStartError::Config {
                    destination: "dhis2",
                    error,
                })?;
            let pass = CompletenessWorker {
                store: store.clone(),
                destination: Dhis2Sink::new(client, d.metadata_refresh),
                data_sets: d.completeness.clone(),
                calendar: d.calendar,
                retry: d.retry,
                circuit,
                clock: Arc::new(SystemClock),
                batch: 100,
                recheck: d.max_push_delay.max(d.push_delay),
                lease: d.lease,
                metadata_refresh: d.metadata_refresh,
                idle: idle * 5,
                metadata: DataSetCache::default(),
            };
            info!(
                data_sets = d.completeness.len(),
                "dhis2 completeness registration started"
            );
            let rx = shutdown.clone();
            tasks.push(tokio::spawn(async move { pass.run(rx).await }));
        }
        info!("dhis2 delivery started");
        let rx = shutdown.clone();
        tasks.push(tokio::spawn(async move { worker.run(rx).await }));
    }
    Ok(tasks)
}
