//! Purging personal data once delivery no longer needs it.
//!
//! Raw payloads and FHIR bundles carry client data. A bundle is purged
//! once it is delivered (or superseded) and the retention period has
//! passed; an event's raw payload once no bundle of it waits for delivery
//! and the same period has passed since its last version arrived. What
//! stays is what deduplication and DHIS2 totals need: ids, version
//! hashes and aggregate contributions.

use std::time::Duration;

use serde::Serialize;

use super::sql::query;
use super::{Store, StoreError};

/// What one purge removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PurgeReport {
    /// Raw event payloads removed.
    pub payloads: u64,
    /// FHIR bundles removed.
    pub bundles: u64,
}

impl Store {
    /// Purges delivered payloads older than `retention`, as of `now_ms`.
    pub async fn purge_delivered(
        &self,
        retention: Duration,
        now_ms: i64,
    ) -> Result<PurgeReport, StoreError> {
        let cutoff = now_ms - i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
        let mut tx = self.begin_write().await?;
        let bundles = query(
            self.backend,
            "UPDATE fhir_outbox SET bundle = NULL \
             WHERE bundle IS NOT NULL AND state IN ('delivered', 'superseded') AND updated_at < $1"
                .to_owned(),
            vec![cutoff.into()],
        )
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let payloads = query(
            self.backend,
            "UPDATE events SET payload = NULL \
             WHERE payload IS NOT NULL AND updated_at < $1 AND NOT EXISTS ( \
               SELECT 1 FROM fhir_outbox o WHERE o.source = events.source \
               AND o.event_id = events.event_id AND o.state IN ('pending', 'delivering'))"
                .to_owned(),
            vec![cutoff.into()],
        )
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(PurgeReport { payloads, bundles })
    }
}
