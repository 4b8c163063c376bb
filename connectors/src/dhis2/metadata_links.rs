//! How the metadata a mapping names hangs together in DHIS2, for the
//! static preflight: each data element's category combo and data sets,
//! each data set's period type, the data sets each org unit is assigned
//! to, each option combo's category combo.
//!
//! Batched: one `GET /api/{kind}?filter=id:in:[…]&fields=…&paging=false`
//! per kind and per 100 ids (and one per 100 codes for `code:`
//! references), never one request per id; a country's facility list of
//! 1,500 org units is 15 requests. The shapes are those of DHIS2
//! 2.38–2.41 (`dataSetElements[dataSet[id]]` on a data element,
//! `dataSets[id]` on an org unit, `categoryCombo[id]` on data elements,
//! option combos and data sets, `periodType` as its name).

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use super::client::Dhis2Client;
use super::import_summary::Dhis2Error;
use super::metadata::{CHUNK, CODE_PREFIX, References};

/// A data element as the preflight needs it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DataElementLinks {
    /// Its UID.
    pub id: String,
    /// Its name, for messages.
    pub name: Option<String>,
    /// The UID of its (disaggregation) category combo.
    pub category_combo: Option<String>,
    /// The UIDs of the data sets it is in.
    pub data_sets: BTreeSet<String>,
}

/// An org unit as the preflight needs it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrgUnitLinks {
    /// Its UID.
    pub id: String,
    /// Its name, for messages.
    pub name: Option<String>,
    /// The UIDs of the data sets assigned to it.
    pub data_sets: BTreeSet<String>,
}

/// A category option combo (disaggregation or attribute).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OptionComboLinks {
    /// Its UID.
    pub id: String,
    /// Its name, for messages.
    pub name: Option<String>,
    /// The UID of the category combo it belongs to.
    pub category_combo: Option<String>,
}

/// A data set as the preflight needs it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DataSetLinks {
    /// Its UID.
    pub id: String,
    /// Its name, for messages.
    pub name: Option<String>,
    /// Its period type's name (`Monthly`, `WeeklyWednesday`, …).
    pub period_type: Option<String>,
    /// The UID of its attribute category combo.
    pub category_combo: Option<String>,
}

/// A data set's timeliness (`timelyDays`), for the completeness grace
/// check.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DataSetTimeliness {
    /// Its UID.
    pub id: String,
    /// Its name, for messages.
    pub name: Option<String>,
    /// Days after a period's last day within which a completeness
    /// registration counts as on time (DHIS2's `timelyDays`).
    pub timely_days: Option<i64>,
}

/// What names an attribute option combo where DHIS2 takes no combo UID
/// (the `cc` and `cp` of `DELETE /api/completeDataSetRegistrations`): its
/// category combo and category options.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttributeOptions {
    /// The UID of its (attribute) category combo.
    pub category_combo: String,
    /// The UIDs of its category options, one per category of the combo.
    pub category_options: Vec<String>,
}

/// What DHIS2 says about a set of references. A reference that is not a
/// key of its map was not found (or the user may not see it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetadataLinks {
    /// Data elements, by the reference as written (UID or `code:CODE`).
    pub data_elements: BTreeMap<String, DataElementLinks>,
    /// Org units, by the reference as written.
    pub org_units: BTreeMap<String, OrgUnitLinks>,
    /// Category and attribute option combos, by the reference as written.
    pub option_combos: BTreeMap<String, OptionComboLinks>,
    /// Every data set of the data elements found, by UID.
    pub data_sets: BTreeMap<String, DataSetLinks>,
}

#[derive(Debug, Deserialize)]
struct Id {
    id: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DataSetElement {
    data_set: Option<Id>,
}

/// One object of any of the four lists, with the fields asked for.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Object {
    id: String,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    category_combo: Option<Id>,
    #[serde(default)]
    data_set_elements: Vec<DataSetElement>,
    #[serde(default)]
    data_sets: Vec<Id>,
    #[serde(default)]
    period_type: Option<String>,
    #[serde(default)]
    timely_days: Option<i64>,
    #[serde(default)]
    category_options: Vec<Id>,
}

impl Dhis2Client {
    /// Looks up the data elements, org units and option combos of `refs`
    /// and the data sets of the data elements found: four kinds of
    /// request, each batched by 100 ids or codes.
    pub async fn metadata_links(&self, refs: &References) -> Result<MetadataLinks, Dhis2Error> {
        let mut links = MetadataLinks::default();
        let des = self
            .objects(
                "dataElements",
                "id,code,name,categoryCombo[id],dataSetElements[dataSet[id]]",
                &refs.data_elements,
            )
            .await?;
        for (written, o) in des {
            let data_sets = o
                .data_set_elements
                .iter()
                .filter_map(|e| e.data_set.as_ref().map(|d| d.id.clone()))
                .collect();
            links.data_elements.insert(
                written,
                DataElementLinks {
                    id: o.id,
                    name: o.name,
                    category_combo: o.category_combo.map(|c| c.id),
                    data_sets,
                },
            );
        }
        let ous = self
            .objects(
                "organisationUnits",
                "id,code,name,dataSets[id]",
                &refs.org_units,
            )
            .await?;
        for (written, o) in ous {
            links.org_units.insert(
                written,
                OrgUnitLinks {
                    id: o.id,
                    name: o.name,
                    data_sets: o.data_sets.into_iter().map(|d| d.id).collect(),
                },
            );
        }
        let combos: BTreeSet<String> = refs
            .category_option_combos
            .union(&refs.attribute_option_combos)
            .cloned()
            .collect();
        let cocs = self
            .objects(
                "categoryOptionCombos",
                "id,code,name,categoryCombo[id]",
                &combos,
            )
            .await?;
        for (written, o) in cocs {
            links.option_combos.insert(
                written,
                OptionComboLinks {
                    id: o.id,
                    name: o.name,
                    category_combo: o.category_combo.map(|c| c.id),
                },
            );
        }
        let data_sets: BTreeSet<String> = links
            .data_elements
            .values()
            .flat_map(|d| d.data_sets.iter().cloned())
            .collect();
        let sets = self
            .objects(
                "dataSets",
                "id,name,periodType,categoryCombo[id]",
                &data_sets,
            )
            .await?;
        for (_, o) in sets {
            links.data_sets.insert(
                o.id.clone(),
                DataSetLinks {
                    id: o.id,
                    name: o.name,
                    period_type: o.period_type,
                    category_combo: o.category_combo.map(|c| c.id),
                },
            );
        }
        Ok(links)
    }

    /// The `timelyDays` of the data sets `ids` (UIDs), by UID: one
    /// `GET /api/dataSets?filter=id:in:[…]&fields=id,name,timelyDays` per
    /// 100. A data set missing from the answer was not found.
    pub async fn data_set_timeliness(
        &self,
        ids: &BTreeSet<String>,
    ) -> Result<BTreeMap<String, DataSetTimeliness>, Dhis2Error> {
        let sets = self.objects("dataSets", "id,name,timelyDays", ids).await?;
        Ok(sets
            .into_iter()
            .map(|(_, o)| {
                (
                    o.id.clone(),
                    DataSetTimeliness {
                        id: o.id,
                        name: o.name,
                        timely_days: o.timely_days,
                    },
                )
            })
            .collect())
    }

    /// The category combo and category options of the attribute option
    /// combo `aoc` (a UID or `code:CODE`): one `GET
    /// /api/categoryOptionCombos?filter=…&fields=id,code,categoryCombo[id],categoryOptions[id]`.
    /// `None` when DHIS2 has no such combo (or it has no category combo).
    pub async fn attribute_options(
        &self,
        aoc: &str,
    ) -> Result<Option<AttributeOptions>, Dhis2Error> {
        let refs = BTreeSet::from([aoc.to_owned()]);
        let found = self
            .objects(
                "categoryOptionCombos",
                "id,code,categoryCombo[id],categoryOptions[id]",
                &refs,
            )
            .await?;
        Ok(found.into_iter().find_map(|(_, o)| {
            let category_combo = o.category_combo?.id;
            let mut category_options: Vec<String> =
                o.category_options.into_iter().map(|c| c.id).collect();
            category_options.sort();
            Some(AttributeOptions {
                category_combo,
                category_options,
            })
        }))
    }

    /// The objects of `endpoint` that `refs` (UIDs or `code:CODE`) name,
    /// each with the reference as written.
    async fn objects(
        &self,
        endpoint: &str,
        fields: &str,
        refs: &BTreeSet<String>,
    ) -> Result<Vec<(String, Object)>, Dhis2Error> {
        let mut ids = Vec::new();
        let mut codes = Vec::new();
        for r in refs {
            match r.strip_prefix(CODE_PREFIX) {
                Some(code) => codes.push(code),
                None => ids.push(r.as_str()),
            }
        }
        let mut out = Vec::new();
        for (property, values) in [("id", &ids), ("code", &codes)] {
            for chunk in values.chunks(CHUNK) {
                let filter = format!("{property}:in:[{}]", chunk.join(","));
                let list: Vec<Object> = self.fetch(endpoint, fields, &filter).await?;
                for o in list {
                    let written = match (property, &o.code) {
                        ("code", Some(code)) if chunk.contains(&code.as_str()) => {
                            format!("{CODE_PREFIX}{code}")
                        }
                        ("id", _) if chunk.contains(&o.id.as_str()) => o.id.clone(),
                        // Not asked for (a server ignoring the filter).
                        _ => continue,
                    };
                    out.push((written, o));
                }
            }
        }
        Ok(out)
    }
}
