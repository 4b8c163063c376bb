//! The shipped mapping packs: all load, all their test cases pass, and
//! together they exercise both outputs and every resource type the mapping
//! language promises.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use kiungo_mappings::{Event, LoadOptions, MappingSet, PseudonymKey};

fn packs() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../mappings/packs")
}

#[test]
fn every_pack_loads_and_passes_its_tests() {
    let set =
        MappingSet::load_dir(&packs(), LoadOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    assert!(set.mappings().len() >= 4);
    let mut total = 0;
    for report in set.run_tests() {
        total += report.run;
        let failures: Vec<String> = report.failures.iter().map(ToString::to_string).collect();
        assert!(
            failures.is_empty(),
            "{}:\n{}",
            report.mapping,
            failures.join("\n")
        );
        assert!(
            report.run >= 2,
            "{} has {} test(s)",
            report.mapping,
            report.run
        );
    }
    assert!(total >= 16, "{total}");
}

#[test]
fn packs_produce_fhir_and_dhis2_and_every_promised_resource_type() {
    let options = LoadOptions {
        pseudonym_key: Some(PseudonymKey::for_tests()),
        validate_fhir: true,
        ..LoadOptions::default()
    };
    let set = MappingSet::load_dir(&packs(), options).unwrap_or_else(|e| panic!("{e}"));
    let mut types = BTreeSet::new();
    for dir in std::fs::read_dir(packs()).expect("packs") {
        let dir = dir.expect("entry").path();
        if !dir.is_dir() {
            continue;
        }
        let pack_set = MappingSet::load_dir(&dir, LoadOptions::default()).expect("pack loads");
        let source = pack_set.mappings()[0].source.clone();
        let (mut fhir, mut dhis2) = (0, 0);
        for f in std::fs::read_dir(dir.join("fixtures")).expect("fixtures") {
            let f = f.expect("entry").path();
            let name = f.to_string_lossy().into_owned();
            if !name.ends_with(".json") || name.ends_with(".expected.json") {
                continue;
            }
            let payload: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&f).expect("read")).expect("json");
            let event = Event {
                source: source.clone(),
                message_id: Some("m".into()),
                payload: Arc::new(payload),
            };
            if let Ok(out) = set.map(&event) {
                fhir += out.fhir.len();
                dhis2 += out.dhis2.len();
                for e in &out.fhir {
                    types.insert(
                        e.resource["resourceType"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned(),
                    );
                }
            }
        }
        assert!(
            fhir > 0 && dhis2 > 0,
            "{}: {fhir} FHIR, {dhis2} DHIS2",
            dir.display()
        );
    }
    for t in [
        "Patient",
        "Encounter",
        "Observation",
        "Immunization",
        "Condition",
        "MedicationDispense",
        "QuestionnaireResponse",
    ] {
        assert!(types.contains(t), "no pack produces {t}: {types:?}");
    }
}
