//! The static DHIS2 references of a mapping (`kiungo_mappings::static_refs`):
//! what each DHIS2 rule can send whatever the event, with where each id is
//! written, for the DHIS2 preflight.

use std::path::{Path, PathBuf};

use kiungo_mappings::static_refs::{FieldRefs, StaticDhis2Rule};
use kiungo_mappings::{LoadOptions, MappingSet, PeriodType};

fn packs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("packs")
}

fn ids(f: &FieldRefs) -> Vec<&str> {
    f.refs.iter().map(|r| r.id.as_str()).collect()
}

fn rule<'a>(rules: &'a [StaticDhis2Rule], name: &str) -> &'a StaticDhis2Rule {
    rules
        .iter()
        .find(|r| r.name == name)
        .unwrap_or_else(|| panic!("no rule {name}"))
}

/// The CHT pack: inline tables with a `value` column (and a literal
/// default), a CSV table, the default combo; every id with its place.
#[test]
fn the_cht_pack_names_its_tables_cells_with_their_lines() {
    let set = MappingSet::load_dir(&packs().join("cht-anc"), LoadOptions::default())
        .expect("the pack loads");
    let rules = set.static_dhis2_rules();
    assert_eq!(rules.len(), 1);
    let r = &rules[0];
    assert_eq!(
        (r.mapping.as_str(), r.name.as_str()),
        ("cht-anc-visit", "anc_visit")
    );
    assert!(
        r.file.ends_with("cht-anc/anc-visit.yaml"),
        "{}",
        r.file.display()
    );
    assert_eq!(r.period_type, PeriodType::Monthly);

    // `lookup(anc_visit_elements, visit_number, 'hfdmMSPBgLG')`.
    let de = &r.data_element;
    assert_eq!(
        (de.field.as_str(), de.line, de.complete),
        ("dhis2[0].data_element", 138, true)
    );
    assert_eq!(
        ids(de),
        ["fbfJHSPpUQD", "cYeuwXTCPkU", "Jtf34kNZhzP", "hfdmMSPBgLG"]
    );
    let cell = de.refs[1].cell.as_ref().expect("from the table");
    assert_eq!(cell.table, "anc_visit_elements");
    assert_eq!(
        (cell.line, cell.row),
        (33, Some(1)),
        "the table's line, row 1"
    );
    assert!(de.refs[3].cell.is_none(), "the default is a literal");

    assert_eq!(
        ids(&r.category_option_combo),
        ["pq2XI5kz2BY", "PT59n8BQbqM"]
    );
    assert_eq!(ids(&r.attribute_option_combo), ["HllvX50cXC0"], "default");

    let ou = &r.org_unit;
    assert_eq!((ou.line, ou.complete), (140, true));
    assert_eq!(ids(ou), ["DiszpKrYNg8", "mepHuAA9l51", "PybxeRWVSrI"]);
    let cell = ou.refs[2].cell.as_ref().expect("from the CSV");
    assert!(cell.file.ends_with("cht-anc/facilities.csv"));
    assert_eq!((cell.line, cell.row), (4, None), "CSV line 4 (header is 1)");
}

/// CommCare's dict of literal-key lookups: each rule names its own row
/// only.
#[test]
fn a_lookup_with_a_literal_key_names_that_row_only() {
    let set = MappingSet::load_dir(
        &packs().join("commcare-immunization"),
        LoadOptions::default(),
    )
    .expect("the pack loads");
    let rules = set.static_dhis2_rules();
    let bcg = rule(&rules, "bcg_given");
    assert_eq!(ids(&bcg.data_element), ["s46m5MS0hxu"]);
    assert_eq!(
        bcg.data_element.refs[0].cell.as_ref().map(|c| c.line),
        Some(2)
    );
    assert_eq!(ids(&rule(&rules, "yf_given").data_element), ["l6byfWFUGaP"]);
    // `facility.org_unit`, `facility` a whole-row lookup.
    assert_eq!(bcg.org_unit.refs.len(), 4);
    assert!(bcg.org_unit.complete);
}

const MAPPING: &str = r#"id: demo
version: 1
description: demo
source: demo
event_id: event.id
include: [common.shared.yaml]
let:
  site: lookup(sites, event.site, false) or fail('unknown site')
  zone: "lookup(zones, event.zone) if event.zone else lookup(zones, 'north')"
tables:
  sites:
    csv: sites.csv
  zones:
    rows:
      - { zone: north, de: fbfJHSPpUQD }
      - { zone: south, de: not-a-uid }
dhis2:
  - name: by_site
    data_element: =zone.de
    category_option_combo: "=coalesce(event.coc, 'default')"
    org_unit: =site['org_unit']
    period: { type: Weekly, date: event.date }
    aggregation: count
  - name: computed
    data_element: "='code:' ~ event.code"
    org_unit: =event.ou
    attribute_option_combo: code:PROJECT_A
    period: { type: Monthly, date: event.date }
    aggregation: count
tests:
  - name: placeholder
    event: { id: e0 }
    expect_error: "x"
"#;

const SHARED: &str = r#"dhis2:
  - name: shared_rule
    data_element: Y53Jcc9LBYh
    org_unit: =lookup(regions, event.region)
    period: { type: Quarterly, date: event.date }
    aggregation: count
tables:
  regions:
    rows:
      - { name: east, ou: mepHuAA9l51 }
    value: ou
"#;

/// Bindings, `or fail`, `if … else`, `coalesce`, subscripts, shared
/// files; computed parts are skipped and say so; a table cell that is no
/// DHIS2 id is flagged.
#[test]
fn bindings_branches_shared_files_and_computed_parts() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("m.yaml"), MAPPING).expect("mapping");
    std::fs::write(dir.path().join("common.shared.yaml"), SHARED).expect("shared");
    std::fs::write(
        dir.path().join("sites.csv"),
        "code,org_unit,name\nA,DiszpKrYNg8,Ngelehun\nB,,no org unit yet\nC,PybxeRWVSrI,Another\n",
    )
    .expect("csv");
    let set = MappingSet::load_dir(dir.path(), LoadOptions::default()).expect("loads");
    let rules = set.static_dhis2_rules();
    assert_eq!(rules.len(), 3);

    let shared = rule(&rules, "shared_rule");
    assert!(
        shared.file.ends_with("common.shared.yaml"),
        "{}",
        shared.file.display()
    );
    assert_eq!(
        (shared.line, shared.period_type),
        (2, PeriodType::Quarterly)
    );
    assert_eq!(shared.org_unit.field, "dhis2[0].org_unit");
    assert_eq!(ids(&shared.org_unit), ["mepHuAA9l51"]);
    assert_eq!(ids(&shared.data_element), ["Y53Jcc9LBYh"]);

    let by_site = rule(&rules, "by_site");
    assert_eq!(by_site.period_type, PeriodType::Weekly);
    // Both branches of the `if`, one of them a literal key.
    assert_eq!(ids(&by_site.data_element), ["fbfJHSPpUQD", "not-a-uid"]);
    assert!(by_site.data_element.complete);
    let bad = &by_site.data_element.refs[1];
    assert!(
        bad.malformed
            .as_deref()
            .is_some_and(|m| m.contains("not a DHIS2 UID")),
        "{bad:?}"
    );
    assert_eq!(bad.cell.as_ref().map(|c| c.row), Some(Some(1)));
    // The empty cell sends nothing (the mapping fails on it).
    assert_eq!(ids(&by_site.org_unit), ["DiszpKrYNg8", "PybxeRWVSrI"]);
    assert_eq!(
        by_site.org_unit.refs[1].cell.as_ref().map(|c| c.line),
        Some(4)
    );
    // `coalesce(event.coc, 'default')`: the literal, and computed.
    assert_eq!(ids(&by_site.category_option_combo), ["HllvX50cXC0"]);
    assert!(!by_site.category_option_combo.complete);

    let computed = rule(&rules, "computed");
    assert!(computed.data_element.refs.is_empty());
    assert!(!computed.data_element.complete);
    assert!(computed.org_unit.refs.is_empty());
    assert!(!computed.org_unit.complete);
    assert_eq!(ids(&computed.attribute_option_combo), ["code:PROJECT_A"]);
    assert_eq!(computed.attribute_option_combo.line, 27);
}
