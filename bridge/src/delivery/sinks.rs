//! The real destinations: the connectors' HTTP clients behind the
//! workers' traits. The DHIS2 side also resolves references: `code:X`
//! references become UIDs, and a value whose data element, org unit or
//! combo does not exist in DHIS2 is parked with that reason instead of
//! being sent (the preflight cache, refreshed on an interval).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use kiungo_connectors::dhis2::{
    DataValue, Dhis2Client, Dhis2Error, ImportStatus, PreflightReport, ReferenceKind, References,
};
use kiungo_connectors::fhir::FhirClient;
use kiungo_connectors::retry::Retryable;
use tokio::sync::Mutex;
use tracing::{info, warn};

use super::{Dhis2Destination, Dhis2Push, FhirDestination, SinkFailure};
use crate::store::TotalKey;

/// Statuses that say the destination (credentials, URL, a proxy in front
/// of it) is wrong rather than the item: they are retried on the schedule
/// and count on the circuit breaker, so a rotated secret or a wrong base
/// URL holds deliveries back instead of parking every one of them. 409 is
/// a version conflict between concurrent writers, which clears on retry.
fn destination_level(status: u16) -> bool {
    matches!(status, 401 | 403 | 404 | 405 | 407 | 409) || (300..400).contains(&status)
}

/// Server messages can quote what was sent (HAPI quotes the conditional
/// match URL with the client's identifier, others a patient's name in
/// single quotes): they are cut by the one redaction policy
/// ([`kiungo_mappings::redact::external`]) before they are logged, stored
/// or published.
/// The text is also cut to [`MAX_SERVER_TEXT`] characters: a proxy's
/// error page or an OperationOutcome listing every entry would otherwise
/// be stored in each dead letter and `last_error`, and logged.
pub fn redact(message: &str) -> String {
    cap(kiungo_mappings::redact::external(message))
}

/// The longest server message kept, in characters (an OperationOutcome's
/// diagnostics or a DHIS2 conflict are far shorter).
pub const MAX_SERVER_TEXT: usize = 1_000;

/// `text` cut to [`MAX_SERVER_TEXT`] characters, saying how many were cut.
fn cap(text: String) -> String {
    let total = text.chars().count();
    if total <= MAX_SERVER_TEXT {
        return text;
    }
    let kept: String = text.chars().take(MAX_SERVER_TEXT).collect();
    format!("{kept}… ({} more characters)", total - MAX_SERVER_TEXT)
}

fn failure(e: &(impl Retryable + std::fmt::Display), destination: bool) -> SinkFailure {
    SinkFailure {
        retryable: e.is_retryable() || destination,
        retry_after: e.retry_after(),
        message: redact(&e.to_string()),
    }
}

fn fhir_failure(e: &kiungo_connectors::fhir::FhirError) -> SinkFailure {
    use kiungo_connectors::fhir::FhirError as E;
    let destination = match e {
        E::Status { status, .. } => destination_level(*status),
        E::UnexpectedResponse { .. } | E::Auth(_) | E::Transport(_) => true,
    };
    failure(e, destination)
}

pub(super) fn dhis2_failure(e: &kiungo_connectors::dhis2::Dhis2Error) -> SinkFailure {
    use kiungo_connectors::dhis2::Dhis2Error as E;
    let destination = match e {
        E::Status { status, .. } => destination_level(*status),
        E::UnexpectedResponse { .. } | E::Auth(_) | E::Transport(_) => true,
        E::Encode(_) => false,
    };
    failure(e, destination)
}

impl FhirDestination for FhirClient {
    async fn transaction(
        &self,
        bundle: &str,
        traceparent: Option<&str>,
    ) -> Result<Vec<String>, SinkFailure> {
        match FhirClient::transaction(self, bundle, traceparent).await {
            Ok(r) => Ok(r
                .entries
                .into_iter()
                .filter_map(|e| e.resource_id)
                .collect()),
            Err(e) => Err(fhir_failure(&e)),
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

    /// The client.
    pub(super) const fn client(&self) -> &Dhis2Client {
        &self.client
    }

    /// The UID of an org unit or attribute option combo (`kind`) as a
    /// mapping wrote it: itself, or the UID of a `code:` reference from the
    /// cache (asking DHIS2 when it is not known); `Ok(Err(why))` when
    /// DHIS2 has no such object.
    pub(super) async fn reference_uid(
        &self,
        kind: ReferenceKind,
        written: &str,
    ) -> Result<Result<String, String>, SinkFailure> {
        if !written.starts_with("code:") {
            return Ok(Ok(written.to_owned()));
        }
        let key = (kind, written.to_owned());
        let known = |k: &Known| {
            k.resolved
                .get(&key)
                .cloned()
                .map(Ok)
                .or_else(|| k.missing.get(&key).cloned().map(Err))
        };
        if let Some(answer) = known(&*self.known.lock().await) {
            return Ok(answer);
        }
        let mut refs = References::default();
        match kind {
            ReferenceKind::DataElement => refs.data_elements.insert(written.to_owned()),
            ReferenceKind::OrgUnit => refs.org_units.insert(written.to_owned()),
            ReferenceKind::CategoryOptionCombo => {
                refs.category_option_combos.insert(written.to_owned())
            }
            ReferenceKind::AttributeOptionCombo => {
                refs.attribute_option_combos.insert(written.to_owned())
            }
        };
        self.check(&refs).await?;
        Ok(known(&*self.known.lock().await)
            .unwrap_or_else(|| Err(format!("{kind} `{written}` not found in DHIS2"))))
    }

    /// Checks references against DHIS2 and remembers the answer. Returns
    /// the report (the preflight at start logs its missing references).
    pub async fn check(&self, refs: &References) -> Result<PreflightReport, SinkFailure> {
        let report = self
            .client
            .check_references(refs)
            .await
            .map_err(|e| dhis2_failure(&e))?;
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

    /// The static preflight ([`super::static_preflight::run`]) with this
    /// sink's client.
    pub async fn static_check(
        &self,
        rules: &[kiungo_mappings::static_refs::StaticDhis2Rule],
        calendar: kiungo_mappings::period::Calendar,
        completeness: &[super::completeness::CompletenessConfig],
    ) -> Result<super::static_preflight::StaticReport, SinkFailure> {
        super::static_preflight::run(&self.client, rules, calendar, completeness)
            .await
            .map_err(|e| dhis2_failure(&e))
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
        let batch = self.client.batch_size().max(1);
        // Groups of positions in `sent` still to post, the next last: the
        // batches first, then whatever a conflict without positions or a
        // 409 WebMessage leaves to find out.
        let positions: Vec<usize> = (0..sent.len()).collect();
        let mut groups: Vec<Vec<usize>> = positions
            .chunks(batch)
            .rev()
            .map(<[usize]>::to_vec)
            .collect();
        while let Some(group) = groups.pop() {
            let chunk: Vec<DataValue> = group.iter().map(|&j| sent[j].clone()).collect();
            let mut park = |j: usize, code: &str, message: &str| {
                push.rejected
                    .insert(index_of_sent[j], (code.to_owned(), message.to_owned()));
            };
            // A push carries totals of many events: its `deliver` span
            // starts a trace of its own.
            let mut otel = crate::telemetry::deliver(None, "dhis2");
            otel.set_count("kiungo.values", chunk.len() as u64);
            let traceparent = crate::telemetry::outgoing_traceparent(&otel, None);
            let posted = self
                .client
                .post_data_values(&chunk, Some(&traceparent))
                .await;
            match &posted {
                Ok(o) if o.is_batch_rejected() => {
                    otel.set("kiungo.outcome", "rejected");
                    otel.fail("dhis2_rejected");
                }
                Ok(_) => otel.set("kiungo.outcome", "delivered"),
                Err(e) if e.is_values_conflict() => {
                    otel.set("kiungo.outcome", "conflict");
                    otel.fail("dhis2_conflict");
                }
                Err(e) => {
                    otel.set("kiungo.outcome", "failed");
                    otel.fail(&super::warn_limit::failure_class(&e.to_string()));
                }
            }
            otel.end();
            let outcome = match posted {
                Ok(outcome) => outcome,
                Err(e) if e.is_values_conflict() => {
                    // Permanent for these values, whatever the rest:
                    // find the offending ones and send the others.
                    let (code, message) = web_message_reason(&e, &chunk);
                    match split_by_object(&e, &group, &chunk) {
                        _ if group.len() == 1 => park(group[0], &code, &message),
                        Some((with, without)) => {
                            for j in with {
                                park(j, &code, &message);
                            }
                            if !without.is_empty() {
                                groups.push(without);
                            }
                        }
                        None => {
                            let (a, b) = group.split_at(group.len() / 2);
                            groups.push(b.to_vec());
                            groups.push(a.to_vec());
                        }
                    }
                    continue;
                }
                Err(e) => return Err(dhis2_failure(&e)),
            };
            if outcome.is_batch_rejected() {
                let (code, message) = outcome.batch_conflict().map_or_else(
                    || {
                        (
                            "dhis2_error".to_owned(),
                            redact(outcome.description.as_deref().unwrap_or_default()),
                        )
                    },
                    |c| {
                        (
                            c.error_code.clone().unwrap_or_else(|| "dhis2_error".into()),
                            reason_text(&c.value, &chunk),
                        )
                    },
                );
                for &j in &group {
                    park(j, &code, &message);
                }
                continue;
            }
            let attributed = !outcome.rejected(chunk.len()).is_empty()
                || !outcome.unexplained_rejections(chunk.len()).is_empty();
            if outcome.status == ImportStatus::Warning && !attributed {
                if let [j] = group[..] {
                    // One value refused without positions (servers before
                    // 2.38, `/api/37`): the conflict is about it.
                    let (code, message) = outcome.conflicts.first().map_or_else(
                        || {
                            (
                                "dhis2_rejected".to_owned(),
                                redact(outcome.description.as_deref().unwrap_or_default()),
                            )
                        },
                        |c| {
                            (
                                c.error_code
                                    .clone()
                                    .unwrap_or_else(|| "dhis2_conflict".into()),
                                reason_text(&c.value, &chunk),
                            )
                        },
                    );
                    park(j, &code, &message);
                } else {
                    // Conflicts without positions: send the values one by
                    // one to learn which were refused. The clean ones are
                    // stored again unchanged (absolute values).
                    groups.extend(group.iter().rev().map(|&j| vec![j]));
                }
                continue;
            }
            for (k, conflict) in outcome.rejected(chunk.len()) {
                park(
                    group[k],
                    conflict.error_code.as_deref().unwrap_or("dhis2_conflict"),
                    &reason_text(&conflict.value, &chunk),
                );
            }
            for k in outcome.unexplained_rejections(chunk.len()) {
                park(
                    group[k],
                    "dhis2_rejected",
                    "DHIS2 listed the value as rejected without a conflict",
                );
            }
        }
        Ok(push)
    }
}

/// DHIS2's code and message of a 409 WebMessage.
fn web_message_reason(e: &Dhis2Error, chunk: &[DataValue]) -> (String, String) {
    match e {
        Dhis2Error::Status {
            message,
            error_code,
            ..
        } => (
            error_code
                .clone()
                .unwrap_or_else(|| "dhis2_conflict".into()),
            reason_text(message, chunk),
        ),
        other => ("dhis2_conflict".into(), redact(&other.to_string())),
    }
}

/// The objects a DHIS2 message quotes in backticks (`` `uid` ``).
fn quoted_objects(message: &str) -> Vec<&str> {
    message.split('`').skip(1).step_by(2).collect()
}

/// The identifiers of a value that DHIS2 can name as an object: data
/// element, org unit, combos, period (never the value).
fn references(v: &DataValue) -> [&str; 5] {
    [
        &v.data_element,
        &v.org_unit,
        &v.category_option_combo,
        &v.attribute_option_combo,
        &v.period,
    ]
}

/// The group's positions split into the values carrying an object the
/// 409 message names and the others; `None` when no value carries one.
fn split_by_object(
    e: &Dhis2Error,
    group: &[usize],
    chunk: &[DataValue],
) -> Option<(Vec<usize>, Vec<usize>)> {
    let Dhis2Error::Status { message, .. } = e else {
        return None;
    };
    let objects = quoted_objects(message);
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for (&j, v) in group.iter().zip(chunk) {
        if references(v).iter().any(|r| objects.contains(r)) {
            with.push(j);
        } else {
            without.push(j);
        }
    }
    (!with.is_empty()).then_some((with, without))
}

/// A DHIS2 message as a reason: cut by the redaction policy, except the
/// identifiers Kiungo itself sent (`` `uid` `` of a data element, org
/// unit, combo, or a period id), which are metadata, not personal data,
/// and what an operator needs to fix the mapping or DHIS2.
fn reason_text(message: &str, chunk: &[DataValue]) -> String {
    reason_keeping(message, |o| {
        chunk.iter().any(|v| references(v).contains(&o))
    })
}

/// A DHIS2 message as a reason, keeping the quoted identifiers `sent`
/// says Kiungo sent (see [`reason_text`]).
pub(super) fn reason_keeping(message: &str, sent: impl Fn(&str) -> bool) -> String {
    const MARK: char = '\u{E000}';
    if message.contains(MARK) {
        return redact(message);
    }
    let sent: Vec<&str> = quoted_objects(message)
        .into_iter()
        .filter(|o| !o.is_empty() && sent(o))
        .collect();
    let mut marked = message.to_owned();
    for (i, o) in sent.iter().enumerate() {
        marked = marked.replace(&format!("`{o}`"), &format!("{MARK}{i}{MARK}"));
    }
    // Cut after the identifiers are back, so that a cut never splits a
    // marker.
    let mut out = kiungo_mappings::redact::external(&marked);
    for (i, o) in sent.iter().enumerate() {
        out = out.replace(&format!("{MARK}{i}{MARK}"), &format!("`{o}`"));
    }
    cap(out)
}

/// The most static problems `/v1/preflight` lists (all are counted).
pub const MAX_LISTED_PROBLEMS: usize = 500;

/// The most static problems logged, one WARN line each.
const MAX_LOGGED_PROBLEMS: usize = 50;

/// Logs a preflight's answer (every reference that does not exist, every
/// problem of the static check) and keeps it for `/v1/preflight` with
/// when it ran and after how many attempts.
pub fn log_preflight(answer: &super::preflight::Answer, attempts: u32) {
    let report = &answer.stored;
    let missing: Vec<String> = report.missing.iter().map(ToString::to_string).collect();
    let resolved: usize = report.resolved.values().map(BTreeMap::len).sum();
    let problems = answer
        .static_report
        .as_ref()
        .map_or(&[][..], |s| &s.problems[..]);
    let mut view = serde_json::json!({
        "checked_at_ms": crate::store::now_ms(),
        "attempts": attempts,
        "complete": report.missing.is_empty()
            && problems.iter().all(|p| p.severity == super::static_preflight::Severity::Warning),
        "resolved": resolved,
        "missing": missing,
    });
    if let Some(s) = &answer.static_report {
        view["server"] = serde_json::json!({"version": s.version, "calendar": s.calendar});
        view["static"] = serde_json::json!({
            "rules": s.rules,
            "references": s.references,
            "computed_fields": s.computed_fields,
            "problems_total": s.problems.len(),
            "problems": s.problems.iter().take(MAX_LISTED_PROBLEMS).map(|p| {
                let mut v = serde_json::to_value(p).unwrap_or_default();
                v["text"] = p.to_string().into();
                v
            }).collect::<Vec<_>>(),
        });
    }
    remember_preflight(view);
    if let Some(s) = &answer.static_report {
        for p in s.problems.iter().take(MAX_LOGGED_PROBLEMS) {
            match p.severity {
                super::static_preflight::Severity::Error => {
                    warn!(problem = %p, "dhis2 preflight: mapping or server problem");
                }
                super::static_preflight::Severity::Warning => {
                    warn!(problem = %p, "dhis2 preflight: warning");
                }
            }
        }
        if s.problems.len() > MAX_LOGGED_PROBLEMS {
            warn!(
                more = s.problems.len() - MAX_LOGGED_PROBLEMS,
                "dhis2 preflight: more problems, listed at /v1/preflight"
            );
        }
        if s.problems
            .iter()
            .all(|p| p.severity == super::static_preflight::Severity::Warning)
        {
            info!(
                rules = s.rules,
                references = s.references,
                version = s.version.as_deref().unwrap_or("?"),
                calendar = s.calendar.as_deref().unwrap_or("?"),
                "dhis2 preflight: every static reference of the mappings checks out"
            );
        }
    }
    if report.missing.is_empty() {
        info!(
            references = resolved,
            "dhis2 preflight: every stored reference exists"
        );
    } else {
        for m in &report.missing {
            warn!(missing = %m, "dhis2 preflight: values with this reference will be parked");
        }
    }
}

static LAST_PREFLIGHT: std::sync::Mutex<Option<serde_json::Value>> = std::sync::Mutex::new(None);

/// Keeps the outcome of the last DHIS2 preflight for `/v1/preflight`.
pub fn remember_preflight(result: serde_json::Value) {
    if let Ok(mut last) = LAST_PREFLIGHT.lock() {
        *last = Some(result);
    }
}

/// The outcome of the last DHIS2 preflight in this process, if one ran.
pub fn last_preflight() -> Option<serde_json::Value> {
    LAST_PREFLIGHT.lock().ok().and_then(|l| l.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The policy itself is tested in `kiungo_mappings::redact`; here,
    /// that server messages go through it.
    #[test]
    fn server_messages_go_through_the_redaction_policy() {
        let r = redact("HTTP 422: Patient 'Aminata Test-Kamara' is a duplicate of «Zawadi»");
        assert_eq!(r, "HTTP 422: Patient '…' is a duplicate of «…»");
    }

    #[test]
    fn long_server_messages_are_cut_saying_how_much() {
        let page = format!("HTTP 502: {}", "Bad gateway. ".repeat(1_000));
        let r = redact(&page);
        assert!(r.starts_with("HTTP 502: Bad gateway."), "{r}");
        let more = page.chars().count() - MAX_SERVER_TEXT;
        assert!(r.ends_with(&format!("… ({more} more characters)")), "{r}");
        assert_eq!(
            r.chars().count(),
            MAX_SERVER_TEXT + format!("… ({more} more characters)").chars().count()
        );
        // Short ones are untouched.
        assert_eq!(redact("HTTP 503: busy"), "HTTP 503: busy");
        // A DHIS2 conflict keeps the identifiers Kiungo sent, also when cut.
        let long = format!(
            "Data element `fbfJHSPpUQD` not found {}",
            "and more ".repeat(200)
        );
        let r = reason_text(&long, &[value("HllvX50cXC0")]);
        assert!(r.starts_with("Data element `fbfJHSPpUQD` not found"), "{r}");
        assert!(r.contains("more characters)"), "{r}");
    }

    fn value(coc: &str) -> DataValue {
        DataValue {
            data_element: "fbfJHSPpUQD".into(),
            period: "202403".into(),
            org_unit: "DiszpKrYNg8".into(),
            category_option_combo: coc.into(),
            attribute_option_combo: "HllvX50cXC0".into(),
            value: "Aminata".into(),
        }
    }

    /// Identifiers Kiungo sent stay in a reason; anything else DHIS2
    /// quotes (a value, an object Kiungo did not send) is cut.
    #[test]
    fn dhis2_reasons_keep_only_the_identifiers_kiungo_sent() {
        let chunk = [value("PT59n8BQbqM")];
        assert_eq!(
            reason_text(
                "Category option combo not found or not accessible: `PT59n8BQbqM`",
                &chunk
            ),
            "Category option combo not found or not accessible: `PT59n8BQbqM`"
        );
        assert_eq!(
            reason_text(
                "Value must match value type of data element `fbfJHSPpUQD`: `Aminata`",
                &chunk
            ),
            "Value must match value type of data element `fbfJHSPpUQD`: `…`"
        );
        assert_eq!(
            reason_text("Category option not found: `Aminata Kamara`", &chunk),
            "Category option not found: `…`"
        );
        // A value equal to an identifier is not restored through it.
        assert_eq!(
            reason_text("Value `Aminata` refused", &chunk),
            "Value `…` refused"
        );
    }

    #[test]
    fn credential_and_url_problems_are_destination_level() {
        for s in [401, 403, 404, 407, 409, 302] {
            assert!(destination_level(s), "{s}");
        }
        for s in [400, 412, 422] {
            assert!(!destination_level(s), "{s}");
        }
    }
}
