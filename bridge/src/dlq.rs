//! Dead-letter operations shared by `kiungo dlq` and the admin API:
//! list, show, replay, discard. Replay depends on where the letter was
//! parked:
//! - `ingest`: the raw message is mapped again with the mappings loaded
//!   now (after a mapping fix) and committed like a new arrival (routed by
//!   the mappings' `match` rules);
//! - `fhir`: the event is mapped again from its raw payload when that is
//!   still held (so a mapping fix takes effect) and the new bundle goes
//!   back into the outbox, due now; after the payload is purged, the stored
//!   bundle is sent again as it was;
//! - `dhis2`: the total is marked for a new push (after a metadata fix),
//!   recomputed from the contributions at that time; a refused data set
//!   completeness registration is looked at again by the completeness
//!   pass (registered if DHIS2 still holds values of the set there).
//!
//! Every replay and discard is written to the audit log with the actor.

use kiungo_mappings::MappingSet;
use serde::Serialize;

use crate::ingest::{Limits, Origin, prepare};
use crate::store::{Outcome, Store, StoreError};

/// What a replay did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum ReplayResult {
    /// Mapped and committed: the dead letter is resolved.
    Ingested {
        /// The commit outcome.
        outcome: Outcome,
    },
    /// Mapped again and parked again (the reason is updated).
    ParkedAgain {
        /// The new reason code.
        reason: String,
    },
    /// The bundle is back in the outbox.
    Requeued,
    /// The event was mapped again with today's mappings (its raw payload
    /// was still held) and the new bundle is in the outbox.
    Remapped {
        /// The mapping that produced the new bundle.
        mapping: String,
    },
    /// The DHIS2 total will be pushed again (or the completeness
    /// registration sent again).
    Remarked,
    /// No such dead letter.
    NotFound,
    /// Not open (already replayed or discarded).
    NotOpen,
    /// Its payload was purged or discarded: nothing to replay.
    NoPayload,
}

/// Replays one dead letter as `actor`.
pub async fn replay(
    store: &Store,
    mappings: &MappingSet,
    limits: Limits,
    id: i64,
    actor: &str,
) -> Result<ReplayResult, StoreError> {
    let Some(dl) = store.dead_letter(id).await? else {
        return Ok(ReplayResult::NotFound);
    };
    if dl.state != "open" {
        return Ok(ReplayResult::NotOpen);
    }
    let Some(payload) = dl.payload.clone() else {
        return Ok(ReplayResult::NoPayload);
    };
    let now = crate::store::now_ms();
    let result = match dl.stage.as_str() {
        "fhir" => {
            let outbox: Option<i64> = dl
                .message_id
                .as_deref()
                .and_then(|m| m.strip_prefix("outbox:"))
                .and_then(|n| n.parse().ok());
            match outbox {
                Some(outbox) => replay_bundle(store, mappings, limits, &dl, outbox, now).await?,
                None => ReplayResult::NoPayload,
            }
        }
        "dhis2" => {
            let detail: serde_json::Value = serde_json::from_slice(&payload).unwrap_or_default();
            let field = |k: &str| {
                detail
                    .get(k)
                    .and_then(serde_json::Value::as_str)
                    .map(str::to_owned)
            };
            if let (Some(data_set), Some(period), Some(org_unit)) =
                (field("dataSet"), field("period"), field("orgUnit"))
            {
                let key = crate::store::CompletenessKey {
                    data_set,
                    period,
                    org_unit,
                    // Letters parked before migration 0013 name no combo:
                    // theirs was the default.
                    attribute_option_combo: field("attributeOptionCombo")
                        .unwrap_or_else(|| kiungo_mappings::DEFAULT_COMBO.to_owned()),
                };
                return finish_replay(
                    store,
                    id,
                    actor,
                    now,
                    if store.recheck_completeness(&key, now).await? {
                        ReplayResult::Remarked
                    } else {
                        ReplayResult::NoPayload
                    },
                )
                .await;
            }
            match (
                field("dataElement"),
                field("period"),
                field("orgUnit"),
                field("categoryOptionCombo"),
                field("attributeOptionCombo"),
            ) {
                (Some(de), Some(pe), Some(ou), Some(coc), Some(aoc)) => {
                    store.remark_total(&(de, pe, ou, coc, aoc), now).await?;
                    ReplayResult::Remarked
                }
                _ => ReplayResult::NoPayload,
            }
        }
        _ => {
            let headers = dl
                .headers
                .as_deref()
                .and_then(|h| serde_json::from_str(h).ok());
            let origin = Origin {
                source: dl.source.clone(),
                queue: dl.queue.clone(),
                message_id: dl.message_id.clone(),
                timestamp_ms: None,
                headers,
                route: Ok(None),
            };
            let ingest = prepare(mappings, origin, payload, limits);
            let outcome = store
                .commit(&[ingest])
                .await?
                .into_iter()
                .next()
                .unwrap_or(Outcome::Duplicate);
            match outcome {
                Outcome::Parked { reason, .. } => ReplayResult::ParkedAgain { reason },
                outcome => ReplayResult::Ingested { outcome },
            }
        }
    };
    finish_replay(store, id, actor, now, result).await
}

/// Records a replay's result (audited): the letter is resolved when the
/// replay took.
async fn finish_replay(
    store: &Store,
    id: i64,
    actor: &str,
    now: i64,
    result: ReplayResult,
) -> Result<ReplayResult, StoreError> {
    let resolved = matches!(
        result,
        ReplayResult::Ingested { .. } | ReplayResult::Requeued | ReplayResult::Remarked
    );
    let detail = serde_json::to_string(&result).unwrap_or_default();
    store
        .mark_replayed(id, resolved, actor, &detail, now)
        .await?;
    Ok(result)
}

/// A parked FHIR bundle: mapped again from the event's raw payload when it
/// is still held (so that a mapping fix takes effect), else sent as
/// stored.
async fn replay_bundle(
    store: &Store,
    mappings: &MappingSet,
    limits: Limits,
    dl: &crate::store::DeadLetter,
    outbox: i64,
    now: i64,
) -> Result<ReplayResult, StoreError> {
    if let Some(raw) = store.outbox_event_payload(outbox).await? {
        let origin = Origin {
            source: dl.source.clone(),
            queue: None,
            message_id: dl.message_id.clone(),
            timestamp_ms: None,
            headers: None,
            route: Ok(None),
        };
        match prepare(mappings, origin, raw, limits).result {
            Ok(outputs) => {
                return Ok(match outputs.bundle {
                    Some((bundle, entries)) => {
                        if store
                            .requeue_fhir_with(
                                outbox,
                                &bundle,
                                entries,
                                &outputs.puts,
                                &outputs.mapping,
                                now,
                            )
                            .await?
                        {
                            ReplayResult::Remapped {
                                mapping: outputs.mapping,
                            }
                        } else {
                            ReplayResult::NotOpen
                        }
                    }
                    None => ReplayResult::ParkedAgain {
                        reason: "the event yields no FHIR resources with the current mappings"
                            .into(),
                    },
                });
            }
            Err(rejection) => {
                return Ok(ReplayResult::ParkedAgain {
                    reason: rejection.code,
                });
            }
        }
    }
    Ok(if store.requeue_fhir(outbox, now).await? {
        ReplayResult::Requeued
    } else {
        ReplayResult::NoPayload
    })
}
