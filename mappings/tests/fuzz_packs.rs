//! Fuzz target: every shipped pack's mappings on arbitrary events and on
//! each pack's fixtures mutated (values replaced by markers, by other
//! types, removed, nested deeper).
//!
//! Invariants: mapping never panics and ends within a bound (fuel); it
//! is deterministic (the same event twice, the same result); an error
//! names its mapping (where one was chosen) and carries no marker value in
//! its message beyond the event id it names (values travel apart, in
//! `MapError::values`); outputs are well-formed (`urn:uuid:` full URLs,
//! an event id, JSON that serializes). Run longer:
//! `BOLERO_RANDOM_TEST_TIME_MS=600000 cargo test --release -p
//! kiungo-mappings --test fuzz_packs` (docs/security.md).

use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use kiungo_fuzz_input::{CI_TIME, Input, leaks};
use kiungo_mappings::{Event, LoadOptions, MapError, MappingSet, PseudonymKey};
use serde_json::Value;

fn packs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("packs")
}

/// Every pack, with and without a pseudonym key (without one, events whose
/// mapping calls `pseudonym()` fail, as in a service without the key).
static SETS: LazyLock<[MappingSet; 2]> = LazyLock::new(|| {
    let load = |key: Option<PseudonymKey>| {
        MappingSet::load_dir(
            &packs(),
            LoadOptions {
                pseudonym_key: key,
                validate_fhir: true,
                ..LoadOptions::default()
            },
        )
        .expect("the shipped packs load")
    };
    [load(Some(PseudonymKey::for_tests())), load(None)]
});

/// Every fixture of every pack, with the source its pack reads.
static FIXTURES: LazyLock<Vec<(String, Value)>> = LazyLock::new(|| {
    let mut out = Vec::new();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(packs())
        .expect("packs")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    dirs.sort();
    for dir in dirs {
        let source = SETS[0]
            .mappings()
            .iter()
            .find(|m| m.file.starts_with(&dir))
            .map(|m| m.source.clone())
            .expect("each pack has a mapping");
        let Ok(entries) = std::fs::read_dir(dir.join("fixtures")) else {
            continue;
        };
        let mut files: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        files.sort();
        for f in files {
            let name = f.to_string_lossy();
            if name.ends_with(".json") && !name.ends_with(".expected.json") {
                let text = std::fs::read_to_string(&f).expect("fixture");
                out.push((
                    source.clone(),
                    serde_json::from_str(&text).expect("fixture JSON"),
                ));
            }
        }
    }
    assert!(out.len() >= 20, "{} fixtures", out.len());
    out
});

/// The mapping an error names, if it names one.
fn mapping_of(e: &MapError) -> Option<&str> {
    match e {
        MapError::UnknownMapping { mapping, .. }
        | MapError::NoEventId { mapping }
        | MapError::Field { mapping, .. }
        | MapError::Refused { mapping, .. }
        | MapError::InvalidFhir { mapping, .. } => Some(mapping),
        MapError::NoMapping { .. } | MapError::Ambiguous { .. } => None,
    }
}

/// The event id (or message id) an error names: it may be the event's
/// own value, and is named on purpose.
fn event_of(e: &MapError) -> Option<&str> {
    match e {
        MapError::NoMapping { event, .. }
        | MapError::Ambiguous { event, .. }
        | MapError::UnknownMapping { event, .. }
        | MapError::Field { event, .. }
        | MapError::Refused { event, .. }
        | MapError::InvalidFhir { event, .. } => Some(event),
        MapError::NoEventId { .. } => None,
    }
}

fn check(set: &MappingSet, event: &Event, route: Option<&str>) {
    let map = || match route {
        Some(id) => set.map_by_id(id, event),
        None => set.map(event),
    };
    let started = Instant::now();
    let first = map();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "mapping one event took {:?}",
        started.elapsed()
    );
    assert_eq!(first, map(), "mapping is deterministic");
    match first {
        Ok(out) => {
            assert!(!out.event_id.is_empty(), "an event id");
            assert!(set.mappings().iter().any(|m| m.id == out.mapping));
            for e in &out.fhir {
                assert!(e.full_url.starts_with("urn:uuid:"), "{}", e.full_url);
            }
            serde_json::to_string(&out).expect("outputs serialize");
        }
        Err(e) => {
            let text = e.to_string();
            assert!(!text.is_empty() && !e.reason().is_empty());
            if let Some(m) = mapping_of(&e) {
                assert!(text.contains(m), "names its mapping: {text}");
            }
            let without_id = match event_of(&e) {
                Some(id) if !id.is_empty() => text.replace(id, ""),
                _ => text.clone(),
            };
            let left = leaks(&without_id);
            assert!(left.is_empty(), "{left:?} in the message: {text}");
        }
    }
}

fn target(bytes: &[u8]) {
    let mut input = Input::new(bytes);
    let set = &SETS[input.below(2)];
    let (source, payload) = if input.one_in(4) {
        let sources = ["cht", "commcare", "kobo", "inhouse", "other"];
        (input.pick(&sources).to_owned(), input.json(4))
    } else {
        let (source, fixture) = &FIXTURES[input.below(FIXTURES.len())];
        let mut payload = fixture.clone();
        input.mutate(&mut payload, 6);
        (source.clone(), payload)
    };
    let route = if input.one_in(8) {
        let ids: Vec<&str> = set.mappings().iter().map(|m| m.id.as_str()).collect();
        Some(input.pick(&ids).to_owned())
    } else {
        None
    };
    let event = Event {
        source,
        message_id: (!input.one_in(4)).then(|| "m-1".to_owned()),
        payload: Arc::new(payload),
    };
    check(set, &event, route.as_deref());
}

#[test]
fn packs_on_arbitrary_and_mutated_events() {
    LazyLock::force(&FIXTURES);
    bolero::check!().with_test_time(CI_TIME).for_each(target);
}
