//! Maps every shipped pack's fixtures N times, with and without the FHIR
//! check, and prints µs per event: the check's cost is the difference.
//! Criterion-free, so that a release build needs only the mappings crates:
//!
//! `cargo run --release -p kiungo-mappings --example mapbench -- [N]`

#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::print_stdout,
    reason = "benchmark"
)]

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Instant;

use kiungo_mappings::{Event, LoadOptions, MappingSet, PseudonymKey};

/// The allocator the `kiungo` binary uses.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The fixture events of a pack that map successfully, as raw bytes.
fn fixtures(pack: &Path, set: &MappingSet, source: &str) -> Vec<Vec<u8>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(pack.join("fixtures"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "json")
                && !p.to_string_lossy().ends_with(".expected.json")
        })
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| std::fs::read(p).unwrap())
        .filter(|bytes| set.map(&event(source, bytes)).is_ok())
        .collect()
}

fn event(source: &str, bytes: &[u8]) -> Event {
    Event {
        source: source.to_owned(),
        message_id: Some("m".into()),
        payload: std::sync::Arc::new(serde_json::from_slice(bytes).unwrap()),
    }
}

/// µs per event over `n` rounds of the fixtures, by the wall clock: over
/// a slice this short, a slice in which the thread lost the CPU is never
/// the best one. (The thread's CPU time, `/proc/thread-self/schedstat`,
/// moves in steps of about 0.25 ms here: too coarse for a slice.)
fn time(set: &MappingSet, source: &str, events: &[Vec<u8>], n: usize) -> f64 {
    let start = Instant::now();
    for _ in 0..n {
        for bytes in events {
            black_box(set.map(&event(source, bytes)).unwrap());
        }
    }
    start.elapsed().as_nanos() as f64 / 1e3 / (n * events.len()) as f64
}

/// Rounds per timed slice: a millisecond or a few, so that slices the
/// other processes on the machine left alone are common.
const SLICE: usize = 10;

fn main() {
    let n: usize = std::env::args().nth(1).map_or(2000, |a| a.parse().unwrap());
    let packs = Path::new(env!("CARGO_MANIFEST_DIR")).join("packs");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&packs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    println!("| pack | events | µs/event with FHIR check | without | check |");
    println!("|---|---|---|---|---|");
    for dir in &dirs {
        let load = |validate_fhir| {
            MappingSet::load_dir(
                dir,
                LoadOptions {
                    pseudonym_key: Some(PseudonymKey::for_tests()),
                    validate_fhir,
                    ..LoadOptions::default()
                },
            )
            .unwrap()
        };
        let (with, without) = (load(true), load(false));
        let source = with.mappings()[0].source.clone();
        let events = fixtures(dir, &with, &source);
        // Interleaved in short slices, the best slice of each: other
        // processes disturb both alike, and a slice they left alone shows
        // the cost itself. Five times `n` rounds each in all.
        let (mut a, mut b) = (f64::MAX, f64::MAX);
        for _ in 0..(5 * n).div_ceil(SLICE) {
            a = a.min(time(&with, &source, &events, SLICE));
            b = b.min(time(&without, &source, &events, SLICE));
        }
        println!(
            "| {} | {} | {a:.2} | {b:.2} | {:.2} |",
            dir.file_name().unwrap().to_string_lossy(),
            events.len(),
            a - b
        );
    }
}
