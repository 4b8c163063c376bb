//! The real destinations: the connectors' HTTP clients behind the
//! workers' traits. The DHIS2 side also resolves references: `code:X`
//! references become UIDs, and a value whose data element, org unit or
//! combo does not exist in DHIS2 is parked with that reason instead of
//! being sent (the preflight cache, refreshed on an interval).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use kiungo_connectors::dhis2::{
    DataValue, Dhis2Client, PreflightReport, ReferenceKind, References,
};
use kiungo_connectors::fhir::FhirClient;
use kiungo_connectors::retry::Retryable;
use tokio::sync::Mutex;
use tracing::{info, warn};

use super::{Dhis2Destination, Dhis2Push, FhirDestination, SinkFailure};
use crate::store::TotalKey;

fn failure(e: &(impl Retryable + std::fmt::Display)) -> SinkFailure {
    SinkFailure {
        retryable: e.is_retryable(),
        retry_after: e.retry_after(),
        message: e.to_string(),
    }
}

impl FhirDestination for FhirClient {
    async fn transaction(&self, bundle: &str) -> Result<Vec<String>, SinkFailure> {
        match FhirClient::transaction(self, bundle, None).await {
            Ok(r) => Ok(r
                .entries
                .into_iter()
                .filter_map(|e| e.resource_id)
                .collect()),
            Err(e) => Err(failure(&e)),
        }
    }
}

/// What is known of the references in DHIS2.
#[derive(Debug, Default)]
struct Known {
    /// As written → UID.
    resolved: HashMap<(ReferenceKind, String), String>,
    /// Not found, with the message to park values with.
    missing: HashMap<(ReferenceKind, String), String>,
    refreshed: Option<Instant>,
}

/// DHIS2 with the reference cache.
#[derive(Debug)]
pub struct Dhis2Sink {
    client: Dhis2Client,
    refresh: Duration,
    known: Mutex<Known>,
}

impl Dhis2Sink {
    /// Wraps a client; the cache is refreshed every `refresh`.
    pub fn new(client: Dhis2Client, refresh: Duration) -> Self {
        Self {
            client,
            refresh,
            known: Mutex::new(Known::default()),
        }
    }

    /// Checks references against DHIS2 and remembers the answer. Returns
    /// the report (the preflight at start logs its missing references).
    pub async fn check(&self, refs: &References) -> Result<PreflightReport, SinkFailure> {
        let report = self
            .client
            .check_references(refs)
            .await
            .map_err(|e| failure(&e))?;
        let mut known = self.known.lock().await;
        for (kind, map) in &report.resolved {
            for (written, uid) in map {
                known.resolved.insert((*kind, written.clone()), uid.clone());
                known.missing.remove(&(*kind, written.clone()));
            }
        }
        for m in &report.missing {
            known
                .missing
                .insert((m.kind, m.reference.clone()), format!("{m} in DHIS2"));
        }
        Ok(report)
    }

    async fn resolve_batch(&self, values: &[(TotalKey, String)]) -> Result<(), SinkFailure> {
        let stale = {
            let mut known = self.known.lock().await;
            let stale = known.refreshed.is_none_or(|t| t.elapsed() > self.refresh);
            if stale {
                known.resolved.clear();
                known.missing.clear();
                known.refreshed = Some(Instant::now());
            }
            stale
        };
        let mut refs = References::default();
        {
            let known = self.known.lock().await;
            let unknown = |kind, r: &String| {
                let k = (kind, r.clone());
                stale || (!known.resolved.contains_key(&k) && !known.missing.contains_key(&k))
            };
            for ((de, _, ou, coc, aoc), _) in values {
                if unknown(ReferenceKind::DataElement, de) {
                    refs.data_elements.insert(de.clone());
                }
                if unknown(ReferenceKind::OrgUnit, ou) {
                    refs.org_units.insert(ou.clone());
                }
                if unknown(ReferenceKind::CategoryOptionCombo, coc) {
                    refs.category_option_combos.insert(coc.clone());
                }
                if unknown(ReferenceKind::AttributeOptionCombo, aoc) {
                    refs.attribute_option_combos.insert(aoc.clone());
                }
            }
        }
        let empty = refs.data_elements.is_empty()
            && refs.org_units.is_empty()
            && refs.category_option_combos.is_empty()
            && refs.attribute_option_combos.is_empty();
        if !empty {
            self.check(&refs).await?;
        }
        Ok(())
    }
}

impl Dhis2Destination for Dhis2Sink {
    async fn push(&self, values: &[(TotalKey, String)]) -> Result<Dhis2Push, SinkFailure> {
        self.resolve_batch(values).await?;
        let mut push = Dhis2Push::default();
        let mut sent: Vec<DataValue> = Vec::with_capacity(values.len());
        let mut index_of_sent: Vec<usize> = Vec::with_capacity(values.len());
        {
            let known = self.known.lock().await;
            for (i, ((de, pe, ou, coc, aoc), value)) in values.iter().enumerate() {
                let uid = |kind, r: &String| match known.resolved.get(&(kind, r.clone())) {
                    Some(u) => Ok(u.clone()),
                    None => Err(known
                        .missing
                        .get(&(kind, r.clone()))
                        .cloned()
                        .unwrap_or_else(|| format!("{kind} `{r}` not found in DHIS2"))),
                };
                let resolved = (|| {
                    Ok::<_, String>(DataValue {
                        data_element: uid(ReferenceKind::DataElement, de)?,
                        period: pe.clone(),
                        org_unit: uid(ReferenceKind::OrgUnit, ou)?,
                        category_option_combo: uid(ReferenceKind::CategoryOptionCombo, coc)?,
                        attribute_option_combo: uid(ReferenceKind::AttributeOptionCombo, aoc)?,
                        value: value.clone(),
                    })
                })();
                match resolved {
                    Ok(dv) => {
                        sent.push(dv);
                        index_of_sent.push(i);
                    }
                    Err(message) => {
                        push.rejected
                            .insert(i, ("unknown_reference".into(), message));
                    }
                }
            }
        }
        for (chunk_no, chunk) in sent.chunks(self.client.batch_size().max(1)).enumerate() {
            let offset = chunk_no * self.client.batch_size().max(1);
            let outcome = self
                .client
                .post_data_values(chunk, None)
                .await
                .map_err(|e| failure(&e))?;
            if outcome.is_batch_rejected() {
                let (code, message) = outcome.batch_conflict().map_or_else(
                    || {
                        (
                            "dhis2_error".to_owned(),
                            outcome.description.clone().unwrap_or_default(),
                        )
                    },
                    |c| {
                        (
                            c.error_code.clone().unwrap_or_else(|| "dhis2_error".into()),
                            c.value.clone(),
                        )
                    },
                );
                for j in 0..chunk.len() {
                    push.rejected
                        .insert(index_of_sent[offset + j], (code.clone(), message.clone()));
                }
                continue;
            }
            for (j, conflict) in outcome.rejected(chunk.len()) {
                push.rejected.insert(
                    index_of_sent[offset + j],
                    (
                        conflict
                            .error_code
                            .clone()
                            .unwrap_or_else(|| "dhis2_conflict".into()),
                        conflict.value.clone(),
                    ),
                );
            }
            for j in outcome.unexplained_rejections(chunk.len()) {
                push.rejected.insert(
                    index_of_sent[offset + j],
                    (
                        "dhis2_rejected".into(),
                        "DHIS2 listed the value as rejected without a conflict".into(),
                    ),
                );
            }
        }
        Ok(push)
    }
}

/// Logs a preflight report: every reference that does not exist.
pub fn log_preflight(report: &PreflightReport) {
    if report.missing.is_empty() {
        let n: usize = report.resolved.values().map(BTreeMap::len).sum();
        info!(references = n, "dhis2 preflight: every reference exists");
    } else {
        for m in &report.missing {
            warn!(missing = %m, "dhis2 preflight: values with this reference will be parked");
        }
    }
}
