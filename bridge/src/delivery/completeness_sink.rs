//! DHIS2 behind the completeness pass's trait: a data set's metadata,
//! registrations and their undoing through the connector
//! (`connectors/src/dhis2/completeness.rs`), an org unit written as
//! `code:X` resolved as the value pushes resolve it, DHIS2's refusals
//! told apart from failures to get an answer.

use kiungo_connectors::dhis2::{Dhis2Error, ImportOutcome, ImportStatus, Registration};
use kiungo_mappings::PeriodType;

use super::SinkFailure;
use super::completeness::{CompletenessDestination, CompletionAnswer, DataSetMeta};
use super::sinks::{Dhis2Sink, dhis2_failure, reason_keeping};
use crate::store::CompletenessKey;

/// The default attribute option combo: registrations are made for it.
const DEFAULT_COMBO: &str = "HllvX50cXC0";

/// A failure to read a data set: a 404 WebMessage from DHIS2 itself is
/// the data set missing, permanent; anything else as for the pushes.
fn data_set_failure(id: &str, e: &Dhis2Error) -> SinkFailure {
    match e {
        Dhis2Error::Status {
            status: 404,
            web_message: true,
            ..
        } => SinkFailure {
            retryable: false,
            retry_after: None,
            message: format!("data set `{id}` not found in DHIS2"),
        },
        other => dhis2_failure(other),
    }
}

/// DHIS2's refusal of a request about `key` (sent as `ou`), its message
/// cut of anything but the identifiers Kiungo sent.
fn refused(key: &CompletenessKey, ou: &str, code: Option<&str>, message: &str) -> CompletionAnswer {
    let sent = [key.data_set.as_str(), key.period.as_str(), ou];
    CompletionAnswer::Refused {
        code: code.unwrap_or("dhis2_conflict").to_owned(),
        message: reason_keeping(message, |o| sent.contains(&o)),
    }
}

/// A registration's import summary as an answer.
fn registration_answer(
    key: &CompletenessKey,
    ou: &str,
    outcome: &ImportOutcome,
) -> CompletionAnswer {
    if let Some(c) = outcome.conflicts.first() {
        return refused(key, ou, c.error_code.as_deref(), &c.value);
    }
    if outcome.status == ImportStatus::Success {
        return CompletionAnswer::Done;
    }
    refused(
        key,
        ou,
        None,
        outcome
            .description
            .as_deref()
            .unwrap_or("DHIS2 did not import the registration"),
    )
}

/// A WebMessage 409 from DHIS2 itself (a period not valid, an unknown
/// object) is a refusal; other errors are failures to get an answer.
fn error_answer(
    key: &CompletenessKey,
    ou: &str,
    e: &Dhis2Error,
) -> Result<CompletionAnswer, SinkFailure> {
    match e {
        Dhis2Error::Status {
            message,
            error_code,
            ..
        } if e.is_values_conflict() => Ok(refused(key, ou, error_code.as_deref(), message)),
        other => Err(dhis2_failure(other)),
    }
}

impl CompletenessDestination for Dhis2Sink {
    async fn data_set(&self, id: &str) -> Result<DataSetMeta, SinkFailure> {
        let info = self
            .client()
            .data_set(id)
            .await
            .map_err(|e| data_set_failure(id, &e))?;
        let name = info.period_type.unwrap_or_default();
        let period_type: PeriodType = name.parse().map_err(|e| SinkFailure {
            retryable: false,
            retry_after: None,
            message: format!("data set `{id}`: {e}"),
        })?;
        let mut data_elements = Vec::with_capacity(info.elements.len() * 2);
        for e in info.elements {
            if let Some(code) = e.code {
                data_elements.push(format!("code:{code}"));
            }
            data_elements.push(e.id);
        }
        Ok(DataSetMeta {
            period_type,
            data_elements,
        })
    }

    async fn register(&self, key: &CompletenessKey) -> Result<CompletionAnswer, SinkFailure> {
        let ou = match self.org_unit_uid(&key.org_unit).await? {
            Ok(ou) => ou,
            Err(why) => {
                return Ok(CompletionAnswer::Refused {
                    code: "unknown_reference".into(),
                    message: why,
                });
            }
        };
        let registration = Registration {
            data_set: key.data_set.clone(),
            period: key.period.clone(),
            organisation_unit: ou.clone(),
            attribute_option_combo: DEFAULT_COMBO.into(),
            completed: true,
        };
        match self.client().register_completion(&[registration]).await {
            Ok(outcome) => Ok(registration_answer(key, &ou, &outcome)),
            Err(e) => error_answer(key, &ou, &e),
        }
    }

    async fn undo(&self, key: &CompletenessKey) -> Result<CompletionAnswer, SinkFailure> {
        let ou = match self.org_unit_uid(&key.org_unit).await? {
            Ok(ou) => ou,
            Err(why) => {
                return Ok(CompletionAnswer::Refused {
                    code: "unknown_reference".into(),
                    message: why,
                });
            }
        };
        match self
            .client()
            .undo_completion(&key.data_set, &key.period, &ou)
            .await
        {
            Ok(()) => Ok(CompletionAnswer::Done),
            Err(e) => error_answer(key, &ou, &e),
        }
    }
}
