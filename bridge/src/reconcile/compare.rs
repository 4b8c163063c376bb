//! The comparison itself: pure, no I/O.

use std::collections::BTreeMap;

use kiungo_connectors::dhis2::StoredValue;
use serde::Serialize;

use crate::store::{KiungoTotals, TotalKey};

/// DHIS2's default category option combo, assumed when an answer leaves
/// a combo out.
const DEFAULT_COMBO: &str = "HllvX50cXC0";

/// How one key differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DriftKind {
    /// Kiungo has a total, DHIS2 no value.
    Missing,
    /// Both have the key, with other values; or DHIS2 still holds a
    /// value Kiungo withdrew.
    Different,
    /// DHIS2 holds a value Kiungo never produced: report only.
    NotFromKiungo,
    /// Kiungo's total is not in DHIS2 yet, or differs, because it changed
    /// since its last push and the DHIS2 worker has not sent it yet
    /// (settling, retrying, or DHIS2 unreachable): on its way, not drift.
    Pending,
}

impl DriftKind {
    /// The name used in every output.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Different => "different",
            Self::NotFromKiungo => "not_from_kiungo",
            Self::Pending => "pending",
        }
    }

    /// Every kind, in report order.
    pub const ALL: [Self; 4] = [
        Self::Missing,
        Self::Different,
        Self::NotFromKiungo,
        Self::Pending,
    ];

    /// Whether `--repair` re-pushes Kiungo's total for it (a pending
    /// total is pushed anyway).
    pub fn repairable(self) -> bool {
        matches!(self, Self::Missing | Self::Different)
    }

    /// Whether it counts as drift (the exit code, the drift gauge): a
    /// pending total does not.
    pub fn is_drift(self) -> bool {
        !matches!(self, Self::Pending)
    }
}

/// One key that differs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Drift {
    /// How.
    pub kind: DriftKind,
    /// Data element UID.
    pub data_element: String,
    /// Period id.
    pub period: String,
    /// Org unit UID.
    pub org_unit: String,
    /// Category option combo UID.
    pub category_option_combo: String,
    /// Attribute option combo UID.
    pub attribute_option_combo: String,
    /// Kiungo's total (empty: none, or withdrawn).
    pub kiungo: String,
    /// DHIS2's value (none: not held).
    pub dhis2: Option<String>,
    /// The total as the mappings wrote it (what a repair marks); none
    /// for a value not from Kiungo.
    #[serde(skip)]
    pub written: Option<TotalKey>,
}

/// The outcome of one reconciliation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Data set UID.
    pub data_set: String,
    /// Period id.
    pub period: String,
    /// Keys where both agree.
    pub matching: usize,
    /// Kiungo totals whose references DHIS2 does not know (see the
    /// preflight): not compared.
    pub unresolved: usize,
    /// Every key that differs, by kind then key.
    pub drift: Vec<Drift>,
}

impl Report {
    /// How many keys differ in `kind`.
    pub fn count(&self, kind: DriftKind) -> usize {
        self.drift.iter().filter(|d| d.kind == kind).count()
    }

    /// The totals `--repair` marks for a push, as the mappings wrote them.
    pub fn repairable(&self) -> Vec<TotalKey> {
        self.drift
            .iter()
            .filter(|d| d.kind.repairable())
            .filter_map(|d| d.written.clone())
            .collect()
    }
}

/// DHIS2's key of a value as read back.
fn stored_key(v: &StoredValue) -> TotalKey {
    let combo = |c: &Option<String>| c.clone().unwrap_or_else(|| DEFAULT_COMBO.to_owned());
    (
        v.data_element.clone(),
        v.period.clone(),
        v.org_unit.clone(),
        combo(&v.category_option_combo),
        combo(&v.attribute_option_combo),
    )
}

/// Same value as DHIS2 stores it: numbers compared as numbers (`5` and
/// `5.0`), anything else as text.
fn same(a: &str, b: &str) -> bool {
    match (a.trim().parse::<f64>(), b.trim().parse::<f64>()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

/// Compares Kiungo's totals with the values DHIS2 answered. `resolve`
/// turns a total's key as written into UIDs (`None`: a reference DHIS2
/// does not know); `in_scope` says whether a resolved key belongs to what
/// was read back (its org unit was asked for).
pub fn compare(
    data_set: &str,
    period: &str,
    kiungo: &KiungoTotals,
    dhis2: &[StoredValue],
    resolve: impl Fn(&TotalKey) -> Option<TotalKey>,
    in_scope: impl Fn(&TotalKey) -> bool,
) -> Report {
    let mut report = Report {
        data_set: data_set.to_owned(),
        period: period.to_owned(),
        ..Report::default()
    };
    let held: BTreeMap<TotalKey, Option<String>> = dhis2
        .iter()
        .map(|v| (stored_key(v), v.value.clone()))
        .collect();
    // Kiungo's side by UID key: its totals, then what it pushed and has
    // no total for any more (withdrawn).
    let mut ours: BTreeMap<TotalKey, (String, TotalKey)> = BTreeMap::new();
    for (written, value) in &kiungo.totals {
        match resolve(written) {
            Some(uid) if in_scope(&uid) => {
                ours.insert(uid, (value.clone(), written.clone()));
            }
            Some(_) => {}
            None => report.unresolved += 1,
        }
    }
    for written in kiungo.pushed.keys() {
        if kiungo.totals.contains_key(written) {
            continue;
        }
        if let Some(uid) = resolve(written).filter(|k| in_scope(k)) {
            ours.entry(uid)
                .or_insert_with(|| (String::new(), written.clone()));
        }
    }
    // A total that changed since its last push is on its way.
    let missing_or_pending = |kind, written: &TotalKey| {
        if kiungo.pending.contains(written) {
            DriftKind::Pending
        } else {
            kind
        }
    };
    let drift = |kind, key: &TotalKey, kiungo: String, dhis2: Option<String>, written| Drift {
        kind,
        data_element: key.0.clone(),
        period: key.1.clone(),
        org_unit: key.2.clone(),
        category_option_combo: key.3.clone(),
        attribute_option_combo: key.4.clone(),
        kiungo,
        dhis2,
        written,
    };
    for (key, (value, written)) in &ours {
        let theirs = held.get(key).cloned().flatten().filter(|v| !v.is_empty());
        match theirs {
            // Withdrawn on both sides: nothing to say.
            None if value.is_empty() => {}
            None => report.drift.push(drift(
                missing_or_pending(DriftKind::Missing, written),
                key,
                value.clone(),
                None,
                Some(written.clone()),
            )),
            Some(v) if same(&v, value) => report.matching += 1,
            Some(v) => report.drift.push(drift(
                missing_or_pending(DriftKind::Different, written),
                key,
                value.clone(),
                Some(v),
                Some(written.clone()),
            )),
        }
    }
    for (key, value) in &held {
        if !ours.contains_key(key) {
            report.drift.push(drift(
                DriftKind::NotFromKiungo,
                key,
                String::new(),
                value.clone(),
                None,
            ));
        }
    }
    report.drift.sort_by(|a, b| {
        (
            a.kind,
            &a.data_element,
            &a.org_unit,
            &a.category_option_combo,
        )
            .cmp(&(
                b.kind,
                &b.data_element,
                &b.org_unit,
                &b.category_option_combo,
            ))
            .then_with(|| a.attribute_option_combo.cmp(&b.attribute_option_combo))
    });
    report
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn key(de: &str, ou: &str) -> TotalKey {
        (
            de.into(),
            "202401".into(),
            ou.into(),
            DEFAULT_COMBO.into(),
            DEFAULT_COMBO.into(),
        )
    }

    fn stored(de: &str, ou: &str, v: &str, combos: bool) -> StoredValue {
        StoredValue {
            data_element: de.into(),
            period: "202401".into(),
            org_unit: ou.into(),
            category_option_combo: combos.then(|| DEFAULT_COMBO.into()),
            attribute_option_combo: combos.then(|| DEFAULT_COMBO.into()),
            value: Some(v.into()),
        }
    }

    #[test]
    fn each_kind_of_drift_is_found_and_only_kiungos_are_repairable() {
        let mut kiungo = KiungoTotals::default();
        kiungo
            .totals
            .insert(key("DeSame00001", "Ou000000001"), "12".into());
        kiungo
            .totals
            .insert(key("code:DE_EDIT", "Ou000000001"), "5".into());
        kiungo
            .totals
            .insert(key("DeLost00001", "Ou000000001"), "3".into());
        kiungo
            .totals
            .insert(key("DeUnknown01", "Ou000000001"), "1".into());
        // Withdrawn: pushed once, no total now, DHIS2 still holds it.
        kiungo
            .pushed
            .insert(key("DeGone00001", "Ou000000001"), "4".into());
        let dhis2 = vec![
            stored("DeSame00001", "Ou000000001", "12.0", false),
            stored("DeEdit00001", "Ou000000001", "6", true),
            stored("DeGone00001", "Ou000000001", "4", true),
            stored("DeHand00001", "Ou000000001", "9", true),
        ];
        let resolve = |k: &TotalKey| match k.0.as_str() {
            "DeUnknown01" => None,
            "code:DE_EDIT" => Some((
                "DeEdit00001".to_owned(),
                k.1.clone(),
                k.2.clone(),
                k.3.clone(),
                k.4.clone(),
            )),
            _ => Some(k.clone()),
        };
        let report = compare("DataSet0001", "202401", &kiungo, &dhis2, resolve, |_| true);
        assert_eq!(report.matching, 1, "12 and 12.0 agree");
        assert_eq!(report.unresolved, 1);
        let kinds: Vec<(DriftKind, &str, &str, Option<&str>)> = report
            .drift
            .iter()
            .map(|d| {
                (
                    d.kind,
                    d.data_element.as_str(),
                    d.kiungo.as_str(),
                    d.dhis2.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            kinds,
            vec![
                (DriftKind::Missing, "DeLost00001", "3", None),
                (DriftKind::Different, "DeEdit00001", "5", Some("6")),
                (DriftKind::Different, "DeGone00001", "", Some("4")),
                (DriftKind::NotFromKiungo, "DeHand00001", "", Some("9")),
            ]
        );
        let repair = report.repairable();
        assert_eq!(
            repair,
            vec![
                key("DeLost00001", "Ou000000001"),
                key("code:DE_EDIT", "Ou000000001"),
                key("DeGone00001", "Ou000000001"),
            ],
            "written keys, never the hand-entered value"
        );
    }

    #[test]
    fn keys_out_of_scope_are_left_out() {
        let mut kiungo = KiungoTotals::default();
        kiungo
            .totals
            .insert(key("De000000001", "OuAsked0001"), "1".into());
        kiungo
            .totals
            .insert(key("De000000001", "OuOther0001"), "2".into());
        let report = compare(
            "Ds",
            "202401",
            &kiungo,
            &[],
            |k| Some(k.clone()),
            |k| k.2 == "OuAsked0001",
        );
        assert_eq!(report.drift.len(), 1);
        assert_eq!(report.drift[0].org_unit, "OuAsked0001");
    }
}
