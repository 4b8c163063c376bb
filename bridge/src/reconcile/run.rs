//! One reconciliation: read the data set, Kiungo's totals and DHIS2's
//! values, compare.

use std::collections::BTreeSet;

use kiungo_connectors::dhis2::{Dhis2Client, ReadRequest, ReferenceKind, References};

use super::compare::{Report, compare};
use crate::store::{Store, TotalKey};

/// What to reconcile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Data set UID.
    pub data_set: String,
    /// Period id, in the DHIS2 instance's calendar (as the mappings
    /// computed it).
    pub period: String,
    /// Only this org unit (UID); every org unit Kiungo has totals in
    /// when absent.
    pub org_unit: Option<String>,
    /// With `org_unit`: also its descendants in DHIS2.
    pub children: bool,
}

/// The failure of a reconciliation, naming what failed.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// DHIS2 could not be read.
    #[error("reading data set `{data_set}` back from dhis2: {source}")]
    Dhis2 {
        /// Data set UID.
        data_set: String,
        /// Why.
        #[source]
        source: kiungo_connectors::dhis2::Dhis2Error,
    },
    /// The store could not be read.
    #[error("reading kiungo's totals: {0}")]
    Store(#[from] crate::store::StoreError),
}

/// Reconciles one data set and period. Reads only.
pub async fn reconcile(
    client: &Dhis2Client,
    store: &Store,
    request: &Request,
) -> Result<Report, ReconcileError> {
    let dhis2 = |source| ReconcileError::Dhis2 {
        data_set: request.data_set.clone(),
        source,
    };
    let elements = client
        .data_set(&request.data_set)
        .await
        .map_err(dhis2)?
        .elements;
    // Mappings name a data element by UID or by `code:CODE`.
    let mut written: Vec<String> = Vec::new();
    for e in &elements {
        written.push(e.id.clone());
        if let Some(code) = &e.code {
            written.push(format!("code:{code}"));
        }
    }
    let kiungo = store
        .dhis2_totals_for(&written, &request.period, None)
        .await?;

    // Resolve `code:` references the way the push does; UIDs as they are.
    let keys = || kiungo.totals.keys().chain(kiungo.pushed.keys());
    let mut refs = References::default();
    for (de, _, ou, coc, aoc) in keys() {
        refs.data_elements.insert(de.clone());
        refs.org_units.insert(ou.clone());
        refs.category_option_combos.insert(coc.clone());
        refs.attribute_option_combos.insert(aoc.clone());
    }
    let any_code = keys()
        .any(|(de, _, ou, coc, aoc)| [de, ou, coc, aoc].iter().any(|r| r.starts_with("code:")));
    let resolved = if any_code {
        Some(client.check_references(&refs).await.map_err(dhis2)?)
    } else {
        None
    };
    let resolve = |(de, pe, ou, coc, aoc): &TotalKey| -> Option<TotalKey> {
        let Some(report) = &resolved else {
            return Some((de.clone(), pe.clone(), ou.clone(), coc.clone(), aoc.clone()));
        };
        Some((
            report.resolve(ReferenceKind::DataElement, de)?.to_owned(),
            pe.clone(),
            report.resolve(ReferenceKind::OrgUnit, ou)?.to_owned(),
            report
                .resolve(ReferenceKind::CategoryOptionCombo, coc)?
                .to_owned(),
            report
                .resolve(ReferenceKind::AttributeOptionCombo, aoc)?
                .to_owned(),
        ))
    };

    let org_units: Vec<String> = match &request.org_unit {
        Some(ou) => vec![ou.clone()],
        None => keys()
            .filter_map(|k| resolve(k).map(|k| k.2))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect(),
    };
    let values = if org_units.is_empty() {
        Vec::new()
    } else {
        client
            .read_data_values(ReadRequest {
                data_set: &request.data_set,
                period: &request.period,
                org_units: &org_units,
                children: request.children && request.org_unit.is_some(),
            })
            .await
            .map_err(dhis2)?
    };
    // In scope: the org units asked for, with `children` their whole
    // subtree as DHIS2's hierarchy has it (Kiungo does not keep one), so
    // that a total Kiungo holds for an org unit below, of which DHIS2 has
    // no value, is reported missing.
    let mut scope: BTreeSet<String> = org_units.iter().cloned().collect();
    if request.children {
        if let Some(ou) = &request.org_unit {
            scope.extend(client.org_unit_subtree(ou).await.map_err(dhis2)?);
        }
        scope.extend(values.iter().map(|v| v.org_unit.clone()));
    }
    Ok(compare(
        &request.data_set,
        &request.period,
        &kiungo,
        &values,
        resolve,
        |k| scope.contains(&k.2),
    ))
}
