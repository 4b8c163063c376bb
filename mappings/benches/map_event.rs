//! Mapping one event end to end, per shipped pack: parse the JSON bytes,
//! select the mapping, evaluate, build and validate the outputs.
//!
//! `cargo bench -p kiungo-mappings --bench map_event`

#![allow(missing_docs, clippy::unwrap_used, reason = "benchmark harness")]

use std::hint::black_box;
use std::path::{Path, PathBuf};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kiungo_mappings::{Event, LoadOptions, MappingSet, PseudonymKey};

/// The allocator the `kiungo` binary uses.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The fixture events of a pack that map successfully, as raw bytes.
fn fixtures(pack: &Path, set: &MappingSet, source: &str) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(pack.join("fixtures"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "json")
                && !p.to_string_lossy().ends_with(".expected.json")
        })
        .collect();
    paths.sort();
    for p in paths {
        let bytes = std::fs::read(&p).unwrap();
        let payload = serde_json::from_slice(&bytes).unwrap();
        let event = Event {
            source: source.to_owned(),
            message_id: Some("m".into()),
            payload: std::sync::Arc::new(payload),
        };
        if set.map(&event).is_ok() {
            out.push(bytes);
        }
    }
    out
}

fn bench_packs(c: &mut Criterion) {
    let packs = Path::new(env!("CARGO_MANIFEST_DIR")).join("packs");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&packs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    for validate_fhir in [true, false] {
        let mut group = c.benchmark_group(if validate_fhir {
            "map_event"
        } else {
            "map_event_no_fhir_check"
        });
        group.throughput(Throughput::Elements(1));
        for dir in &dirs {
            let options = LoadOptions {
                pseudonym_key: Some(PseudonymKey::for_tests()),
                validate_fhir,
                ..LoadOptions::default()
            };
            let set = MappingSet::load_dir(dir, options).unwrap();
            let source = set.mappings()[0].source.clone();
            let events = fixtures(dir, &set, &source);
            assert!(
                !events.is_empty(),
                "{} has no mappable fixture",
                dir.display()
            );
            let name = dir.file_name().unwrap().to_string_lossy().into_owned();
            let mut i = 0usize;
            group.bench_function(&name, |b| {
                b.iter(|| {
                    let bytes = &events[i % events.len()];
                    i += 1;
                    let payload = serde_json::from_slice(bytes).unwrap();
                    let event = Event {
                        source: source.clone(),
                        message_id: Some("m".into()),
                        payload: std::sync::Arc::new(payload),
                    };
                    black_box(set.map(&event).unwrap())
                });
            });
        }
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(3)).warm_up_time(std::time::Duration::from_secs(1));
    targets = bench_packs
}
criterion_main!(benches);
