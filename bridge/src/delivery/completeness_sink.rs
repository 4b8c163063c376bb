//! DHIS2 behind the completeness pass's trait: a data set's metadata,
//! registrations and their undoing through the connector
//! (`connectors/src/dhis2/completeness.rs`), an org unit or attribute
//! option combo written as `code:X` resolved as the value pushes resolve
//! it, DHIS2's refusals told apart from failures to get an answer.
//!
//! A registration names its attribute option combo by UID; its undo
//! cannot (DHIS2's `DELETE` takes the combo's category combo and options,
//! `cc` and `cp`), so the undo of a combo other than the default first
//! reads those from DHIS2.

use kiungo_connectors::dhis2::{
    Dhis2Error, ImportOutcome, ImportStatus, ReferenceKind, Registration,
};
use kiungo_mappings::{DEFAULT_COMBO, PeriodType};

use super::SinkFailure;
use super::completeness::{CompletenessDestination, CompletionAnswer, DataSetMeta};
use super::sinks::{Dhis2Sink, dhis2_failure, reason_keeping};
use crate::store::CompletenessKey;

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

/// A reference (org unit, attribute option combo) DHIS2 does not have:
/// a refusal, recorded as such.
fn unknown_reference(message: String) -> CompletionAnswer {
    CompletionAnswer::Refused {
        code: "unknown_reference".into(),
        message,
    }
}

/// The org unit and attribute option combo of a request, as sent (UIDs).
struct Sent {
    ou: String,
    aoc: String,
}

/// DHIS2's refusal of a request about `key` (sent as `sent`), its message
/// cut of anything but the identifiers Kiungo sent.
fn refused(
    key: &CompletenessKey,
    sent: &Sent,
    code: Option<&str>,
    message: &str,
) -> CompletionAnswer {
    let ids = [
        key.data_set.as_str(),
        key.period.as_str(),
        sent.ou.as_str(),
        sent.aoc.as_str(),
    ];
    CompletionAnswer::Refused {
        code: code.unwrap_or("dhis2_conflict").to_owned(),
        message: reason_keeping(message, |o| ids.contains(&o)),
    }
}

/// A registration's import summary as an answer.
fn registration_answer(
    key: &CompletenessKey,
    sent: &Sent,
    outcome: &ImportOutcome,
) -> CompletionAnswer {
    if let Some(c) = outcome.conflicts.first() {
        return refused(key, sent, c.error_code.as_deref(), &c.value);
    }
    if outcome.status == ImportStatus::Success {
        return CompletionAnswer::Done;
    }
    refused(
        key,
        sent,
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
    sent: &Sent,
    e: &Dhis2Error,
) -> Result<CompletionAnswer, SinkFailure> {
    match e {
        Dhis2Error::Status {
            message,
            error_code,
            ..
        } if e.is_values_conflict() => Ok(refused(key, sent, error_code.as_deref(), message)),
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
        let sent = match self.sent(key).await? {
            Ok(sent) => sent,
            Err(refusal) => return Ok(refusal),
        };
        let registration = Registration {
            data_set: key.data_set.clone(),
            period: key.period.clone(),
            organisation_unit: sent.ou.clone(),
            attribute_option_combo: sent.aoc.clone(),
            completed: true,
        };
        match self.client().register_completion(&[registration]).await {
            Ok(outcome) => Ok(registration_answer(key, &sent, &outcome)),
            Err(e) => error_answer(key, &sent, &e),
        }
    }

    async fn undo(&self, key: &CompletenessKey) -> Result<CompletionAnswer, SinkFailure> {
        let sent = match self.sent(key).await? {
            Ok(sent) => sent,
            Err(refusal) => return Ok(refusal),
        };
        let attribute = if sent.aoc == DEFAULT_COMBO {
            None
        } else {
            match self.client().attribute_options(&sent.aoc).await {
                Ok(Some(a)) => Some(a),
                Ok(None) => {
                    return Ok(unknown_reference(format!(
                        "attribute option combo `{}` not found in DHIS2",
                        key.attribute_option_combo
                    )));
                }
                Err(e) => return Err(dhis2_failure(&e)),
            }
        };
        match self
            .client()
            .undo_completion(&key.data_set, &key.period, &sent.ou, attribute.as_ref())
            .await
        {
            Ok(()) => Ok(CompletionAnswer::Done),
            Err(e) => error_answer(key, &sent, &e),
        }
    }
}

impl Dhis2Sink {
    /// The UIDs to send for `key`'s org unit and attribute option combo,
    /// or the refusal to record when DHIS2 has no such object.
    async fn sent(
        &self,
        key: &CompletenessKey,
    ) -> Result<Result<Sent, CompletionAnswer>, SinkFailure> {
        let ou = match self
            .reference_uid(ReferenceKind::OrgUnit, &key.org_unit)
            .await?
        {
            Ok(ou) => ou,
            Err(why) => return Ok(Err(unknown_reference(why))),
        };
        let aoc = match self
            .reference_uid(
                ReferenceKind::AttributeOptionCombo,
                &key.attribute_option_combo,
            )
            .await?
        {
            Ok(aoc) => aoc,
            Err(why) => return Ok(Err(unknown_reference(why))),
        };
        Ok(Ok(Sent { ou, aoc }))
    }
}
