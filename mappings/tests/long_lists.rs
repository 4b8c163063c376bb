//! Events with long lists, near the 1 MiB event limit, map as the same
//! events without them: the lists are walked (by `selectattr`, `in`,
//! `| list`) in time that grows with their length, and what they do not
//! match changes nothing.

use std::path::Path;
use std::sync::Arc;

use kiungo_mappings::{Event, LoadOptions, MappingSet, PseudonymKey};
use serde_json::{Value, json};

fn opensrp() -> MappingSet {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("packs/opensrp-core");
    MappingSet::load_dir(
        &dir,
        LoadOptions {
            pseudonym_key: Some(PseudonymKey::for_tests()),
            validate_fhir: true,
            ..LoadOptions::default()
        },
    )
    .expect("the pack loads")
}

fn fixture(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("packs/opensrp-core/fixtures")
        .join(name);
    serde_json::from_slice(&std::fs::read(path).expect("fixture")).expect("fixture JSON")
}

fn event(payload: Value) -> Event {
    Event {
        source: "opensrp".into(),
        message_id: Some("m".into()),
        payload: Arc::new(payload),
    }
}

/// A birth registration whose `obs` holds 20 000 more answers (about
/// 1 MiB), none of the fields its bindings select: the same Patient. Each
/// binding's `selectattr` walks the whole list through the VM (the list
/// is too long for the direct path's budget); the payload's nodes kept
/// every item they handed out and searched them on each read, which made
/// each walk quadratic (seconds per event in a release build).
#[test]
fn a_registration_with_20_000_extra_answers_maps_as_without_them() {
    let set = opensrp();
    let plain = fixture("birth-registration.json");
    let expected = set.map(&event(plain.clone())).expect("the fixture maps");

    let mut padded = plain;
    let obs = padded["obs"].as_array_mut().expect("obs is a list");
    for i in 0..20_000 {
        obs.push(json!({ "formSubmissionField": format!("f{i}"), "values": [i] }));
    }
    let size = serde_json::to_vec(&padded).expect("serializes").len();
    assert!((800_000..1_048_576).contains(&size), "{size} bytes");
    assert_eq!(set.map(&event(padded)).expect("maps"), expected);
}
