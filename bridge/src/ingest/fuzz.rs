//! Fuzz target for the HTTP ingest path up to the commit: the request's
//! headers through [`IngestState::admit`] (auth header, source, rate,
//! content type, declared length), then the body through [`prepare`]
//! (size, JSON, route, every shipped pack's mappings), with bodies drawn
//! from the packs' fixtures mutated, arbitrary JSON and any bytes.
//!
//! Invariants: nothing panics; a refusal has one of the statuses the
//! route documents and a message that names what is wrong and quotes no
//! marker value; an admitted caller is a known token allowed on the
//! source (or anyone with `auth: none`); a prepared event keeps the body
//! as sent, carries a valid `traceparent`, and a rejection's reason quotes
//! no marker beyond the ids the caller chose (message id, event id, the
//! mapping a route header names). Run longer:
//! `BOLERO_RANDOM_TEST_TIME_MS=600000 cargo test --release -p kiungo --lib
//! ingest::fuzz` (docs/security.md).

use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use actix_web::ResponseError;
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::test::TestRequest;
use kiungo_fuzz_input::{CI_TIME, Input, MARKER_NAME, leaks};
use kiungo_mappings::{LoadOptions, MappingSet};
use serde_json::Value;

use super::http::IngestState;
use super::{Committer, IngestAuth, Origin, prepare};
use crate::admin::auth::TokenConfig;
use crate::admin::{AdminConfig, Role};
use crate::delivery::retry::ManualClock;
use crate::store::scratch::ScratchDb;
use crate::store::{Backend, Store};

const APP_TOKEN: &str = "fuzz-app-token-0123456789abcdef0123456789";
const OPS_TOKEN: &str = "fuzz-ops-token-0123456789abcdef0123456789";
const VIEWER_TOKEN: &str = "fuzz-viewer-token-0123456789abcdef01234567";

fn packs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../mappings/packs")
}

static MAPPINGS: LazyLock<Arc<MappingSet>> = LazyLock::new(|| {
    Arc::new(MappingSet::load_dir(&packs(), LoadOptions::default()).expect("the packs load"))
});

static FIXTURES: LazyLock<Vec<Vec<u8>>> = LazyLock::new(|| {
    let mut out = Vec::new();
    for pack in std::fs::read_dir(packs()).expect("packs").flatten() {
        let Ok(entries) = std::fs::read_dir(pack.path().join("fixtures")) else {
            continue;
        };
        for f in entries.flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            if name.ends_with(".json") && !name.ends_with(".expected.json") {
                out.push(std::fs::read(f.path()).expect("fixture"));
            }
        }
    }
    out.sort();
    out
});

/// The state the route runs with: the packs, three tokens (an app token
/// on `cht` only, an operator, a viewer), 64 KiB bodies, and a committer
/// on a throwaway SQLite store that nothing here sends to.
fn state(runtime: &tokio::runtime::Runtime, clock: Arc<ManualClock>) -> (IngestState, ScratchDb) {
    let token = |name: &str, role, secret: &str, sources: Option<Vec<String>>| TokenConfig {
        name: name.into(),
        role,
        sha256: Some(crate::admin::token_hash_hex(secret)),
        token: None,
        sources,
    };
    let tokens = AdminConfig {
        tokens: vec![
            token("cht-app", Role::App, APP_TOKEN, Some(vec!["cht".into()])),
            token("ops", Role::Operator, OPS_TOKEN, None),
            token("viewer", Role::Viewer, VIEWER_TOKEN, None),
        ],
    }
    .tokens()
    .expect("tokens");
    let (scratch, store) = runtime.block_on(async {
        let scratch = ScratchDb::new(Backend::Sqlite)
            .await
            .expect("scratch store");
        let store = Store::open(&scratch.config).await.expect("store");
        (scratch, store)
    });
    let (committer, _task) =
        runtime.block_on(async { Committer::spawn(store, Default::default(), None) });
    let config = crate::config::HttpConfig {
        max_body_bytes: 64 * 1024,
        ..Default::default()
    };
    let state = IngestState::new(&config, MAPPINGS.clone(), committer, tokens, clock);
    (state, scratch)
}

/// A header value as a client might send one (skipped when HTTP could
/// not carry it).
fn header_value(input: &mut Input<'_>, choices: &[&str]) -> Option<HeaderValue> {
    let text = if input.one_in(4) {
        String::from_utf8_lossy(input.bytes(64)).into_owned()
    } else {
        let pick = input.pick(choices);
        format!(
            "{pick}{}",
            if input.one_in(6) {
                input.text()
            } else {
                String::new()
            }
        )
    };
    if input.one_in(5) {
        HeaderValue::from_bytes(input.bytes(32)).ok()
    } else {
        HeaderValue::from_str(&text).ok()
    }
}

fn request(input: &mut Input<'_>, body_len: usize) -> TestRequest {
    let mut req = TestRequest::post().uri("/v1/events/x");
    let headers: [(&str, &[&str]); 6] = [
        (
            "authorization",
            &[
                "Bearer fuzz-app-token-0123456789abcdef0123456789",
                "bearer fuzz-ops-token-0123456789abcdef0123456789",
                "Bearer fuzz-viewer-token-0123456789abcdef01234567",
                "Bearer ",
                "Basic Zm9vOmJhcg==",
                "Bearer  fuzz-app-token-0123456789abcdef0123456789 ",
            ],
        ),
        (
            "content-type",
            &[
                "application/json",
                "application/fhir+json; charset=utf-8",
                "text/plain",
                "application/json; charset=latin1",
                "",
            ],
        ),
        (
            "content-length",
            &["0", "65536", "65537", "18446744073709551616", "-1", " 12 "],
        ),
        ("x-message-id", &["m-1", MARKER_NAME, "x\u{0}y", ""]),
        (
            "traceparent",
            &[
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "00-xyz",
                "ff-00000000000000000000000000000000-0000000000000000-01",
            ],
        ),
        (
            "x-kiungo-mapping",
            &["cht-anc-visit", "kobo-malaria-rdt", "nope", MARKER_NAME],
        ),
    ];
    for (name, choices) in headers {
        if input.one_in(5) {
            continue;
        }
        let value = if name == "content-length" && input.one_in(2) {
            HeaderValue::from_str(&body_len.to_string()).ok()
        } else {
            header_value(input, choices)
        };
        if let Some(v) = value {
            req = req.insert_header((HeaderName::from_static(name), v));
        }
    }
    req
}

fn body(input: &mut Input<'_>) -> Vec<u8> {
    match input.below(5) {
        0 => input.json(4).to_string().into_bytes(),
        1 => input.rest().to_vec(),
        _ => {
            let fixture = &FIXTURES[input.below(FIXTURES.len())];
            let mut v: Value = serde_json::from_slice(fixture).expect("fixture JSON");
            input.mutate(&mut v, 6);
            v.to_string().into_bytes()
        }
    }
}

fn target(state: &IngestState, clock: &ManualClock, bytes: &[u8]) {
    let mut input = Input::new(bytes);
    clock.advance(Duration::from_millis(u64::from(input.byte()) * 20));
    let mut state = state.clone();
    if input.one_in(6) {
        state.auth = IngestAuth::None;
    }
    let source = input
        .pick(&[
            "cht",
            "kobo",
            "commcare",
            "inhouse",
            "nope",
            MARKER_NAME,
            "",
        ])
        .to_owned();
    let body = body(&mut input);
    let req = request(&mut input, body.len()).to_http_request();
    let admitted = state.admit(&req, &source);
    match &admitted {
        Ok((key, taken)) => {
            assert!(
                state.sources.contains(&source),
                "admitted to a source no mapping reads"
            );
            assert!(key.starts_with("token:") || key.starts_with("ip:"), "{key}");
            assert!(state.auth == IngestAuth::None || key == "token:cht-app" || key == "token:ops");
            if key == "token:cht-app" {
                assert_eq!(source, "cht", "an app token writes its own sources only");
            }
            assert!(*taken <= state.limits.max_bytes as u64, "{taken}");
        }
        Err(refusal) => {
            let status = refusal.status_code().as_u16();
            assert!([401, 403, 404, 413, 415, 429].contains(&status), "{status}");
            let text = refusal.to_string();
            assert!(!text.is_empty() && text.len() < 400, "{text}");
            // A 415 shows the caller its own Content-Type (64 printable
            // characters at most); refusals are answered, never stored or
            // logged. Every other refusal is made of Kiungo's words, token
            // names and config sources.
            if !matches!(refusal, super::refusal::Refusal::UnsupportedMediaType(_)) {
                assert!(leaks(&text).is_empty(), "refusal quotes a marker: {text}");
            }
        }
    }
    // The route prepares only what was admitted, to a source some mapping
    // reads; a refused request's body is still worth mapping as if it
    // had come to one.
    let source = if admitted.is_ok() {
        source
    } else {
        input
            .pick(&["cht", "kobo", "commcare", "inhouse"])
            .to_owned()
    };
    let message_id = super::http::header(&req, "x-message-id");
    let route = super::http::header(&req, "x-kiungo-mapping");
    let origin = Origin {
        source: source.clone(),
        queue: None,
        message_id: message_id.clone(),
        timestamp_ms: None,
        headers: super::http::header(&req, "traceparent")
            .map(|tp| serde_json::json!({ "traceparent": tp })),
        route: Ok(route.clone()),
    };
    let ingest = prepare(&state.mappings, origin, body.clone(), state.limits);
    assert_eq!(ingest.payload, body, "the body is kept as sent");
    let tp = ingest
        .headers
        .as_ref()
        .and_then(|h| h["traceparent"].as_str())
        .unwrap_or_default();
    assert!(
        crate::trace::trace_id(tp).len() == 32,
        "a valid traceparent: {tp:?}"
    );
    if let Err(r) = &ingest.result {
        assert!(!r.code.is_empty());
        let mut text = r.reason.clone();
        // The ids the caller chose are named on purpose: the message id,
        // the event id, the mapping a route header asks for (longest first,
        // as one may hold another).
        let mut named: Vec<&String> = [&message_id, &r.event_id, &route]
            .into_iter()
            .flatten()
            .collect();
        named.sort_by_key(|n| std::cmp::Reverse(n.len()));
        for n in named {
            text = text.replace(n.as_str(), "");
        }
        assert!(
            leaks(&text).is_empty(),
            "reason quotes a marker: {}",
            r.reason
        );
    }
}

#[test]
fn http_ingest() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let clock = Arc::new(ManualClock::at(1_764_000_000_000));
    let (state, _scratch) = state(&runtime, clock.clone());
    let _enter = runtime.enter();
    LazyLock::force(&FIXTURES);
    // A panic fails the target; nothing of the state is used after one.
    let shared = std::panic::AssertUnwindSafe((state, clock));
    bolero::check!()
        .with_test_time(CI_TIME)
        .for_each(|bytes: &[u8]| {
            let (state, clock) = &*shared;
            target(state, clock, bytes);
        });
}
