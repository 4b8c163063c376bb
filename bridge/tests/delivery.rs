//! The delivery workers against the real store (both backends), with
//! scripted destinations and a clock moved by hand: retries on schedule,
//! `Retry-After`, maximum age, permanent rejections parked, the circuit
//! breaker, claim leases, version order, DHIS2 totals recomputed after
//! edits and withdrawals, DHIS2 conflicts parked per value.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod support;

use kiungo::delivery::circuit::Circuit;
use kiungo::delivery::retry::{Clock, ManualClock, RetryParams};
use kiungo::delivery::{
    Dhis2Destination, Dhis2Push, Dhis2Worker, FhirDestination, FhirWorker, SinkFailure,
};
use kiungo::store::scratch::ScratchDb;
use kiungo::store::{Backend, DeadLetterFilter, Ingest, Outputs, Store, TotalKey};
use kiungo_mappings::{Event, LoadOptions, MappingSet, PseudonymKey};
use serde_json::{Value, json};

fn packs() -> MappingSet {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../mappings/packs");
    MappingSet::load_dir(
        &dir,
        LoadOptions {
            pseudonym_key: Some(PseudonymKey::for_tests()),
            ..LoadOptions::default()
        },
    )
    .expect("packs load")
}

fn visit(id: &str, location: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../mappings/packs/cht-anc/fixtures/anc-visit-1-facility.json");
    let mut v: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("json");
    v["_id"] = json!(id);
    v["fields"]["anc_visits"]["visit_location"] = json!(location);
    v
}

async fn ingest(store: &Store, set: &MappingSet, payload: &Value) {
    ingest_at(store, set, payload, None).await;
}

/// Ingests with a publisher timestamp, which orders versions of an event.
async fn ingest_at(store: &Store, set: &MappingSet, payload: &Value, version_ts: Option<i64>) {
    ingest_as(store, set, payload, version_ts, "cht").await;
}

/// Ingests a CHT event as if it came from `source` (a second CHT
/// instance, say).
async fn ingest_as(
    store: &Store,
    set: &MappingSet,
    payload: &Value,
    version_ts: Option<i64>,
    source: &str,
) {
    let mapped = set
        .map(&Event {
            source: "cht".into(),
            message_id: None,
            payload: Arc::new(payload.clone()),
        })
        .expect("maps");
    let ing = Ingest {
        source: source.into(),
        queue: None,
        message_id: None,
        version_ts,
        received_at: kiungo::store::now_ms(),
        payload: serde_json::to_vec(payload).expect("bytes"),
        headers: None,
        result: Ok(Outputs::from(mapped)),
    };
    store.commit(&[ing]).await.expect("commit");
}

fn transient(retry_after: Option<u64>) -> SinkFailure {
    SinkFailure {
        retryable: true,
        retry_after: retry_after.map(Duration::from_secs),
        message: "HTTP 503: down".into(),
    }
}

/// Answers a scripted destination gives, in order.
type Script<T> = Arc<Mutex<VecDeque<Result<T, SinkFailure>>>>;

/// A FHIR server that answers from a script, then 200s.
#[derive(Debug, Default, Clone)]
struct ScriptedFhir {
    script: Script<Vec<String>>,
    calls: Arc<Mutex<Vec<String>>>,
}

impl ScriptedFhir {
    fn then(self, r: Result<Vec<String>, SinkFailure>) -> Self {
        self.script.lock().expect("lock").push_back(r);
        self
    }
    fn calls(&self) -> usize {
        self.calls.lock().expect("lock").len()
    }
}

impl FhirDestination for ScriptedFhir {
    async fn transaction(
        &self,
        bundle: &str,
        _traceparent: Option<&str>,
    ) -> Result<Vec<String>, SinkFailure> {
        self.calls.lock().expect("lock").push(bundle.to_owned());
        self.script
            .lock()
            .expect("lock")
            .pop_front()
            .unwrap_or_else(|| Ok(vec!["Patient/1".into()]))
    }
}

fn fhir_worker(
    store: &Store,
    dest: ScriptedFhir,
    clock: &ManualClock,
    retry: RetryParams,
) -> FhirWorker<ScriptedFhir> {
    FhirWorker {
        store: store.clone(),
        destination: dest,
        retry,
        circuit: Circuit::new(100, Duration::from_secs(30)),
        clock: Arc::new(clock.clone()),
        batch: 10,
        per_transaction: 1,
        withdraw: kiungo::delivery::withdrawal::WithdrawMode::Delete,
        lease: Duration::from_secs(60),
        idle: Duration::from_millis(10),
        wake: None,
    }
}

const RETRY: RetryParams = RetryParams {
    base_delay: Duration::from_secs(1),
    max_delay: Duration::from_secs(8),
    max_age: Duration::from_secs(60),
};

async fn open(backend: Backend) -> (ScratchDb, Store, ManualClock) {
    let db = ScratchDb::new(backend).await.expect("db");
    let store = Store::open(&db.config).await.expect("open");
    (db, store, ManualClock::at(kiungo::store::now_ms() + 1_000))
}

/// Bundles are due from their commit's wall-clock time: on a busy
/// machine the commits after `open` can pass the hand clock, so a test
/// moves it up to the wall clock before claiming what it just stored.
fn catch_up(clock: &ManualClock) {
    let behind = kiungo::store::now_ms() - clock.now_ms();
    if behind >= 0 {
        clock.advance(Duration::from_millis(behind.unsigned_abs() + 1));
    }
}

async fn state_counts(store: &Store) -> HashMap<String, i64> {
    store
        .outbox_states()
        .await
        .expect("states")
        .into_iter()
        .collect()
}

async fn fhir_retries_then_delivers(backend: Backend) {
    let (_db, store, clock) = open(backend).await;
    let set = packs();
    ingest(&store, &set, &visit("a", "facility")).await;
    catch_up(&clock);
    let dest = ScriptedFhir::default()
        .then(Err(transient(None)))
        .then(Err(transient(Some(30))));
    let w = fhir_worker(&store, dest.clone(), &clock, RETRY);

    let r = w.run_once().await.expect("pass");
    assert_eq!((r.claimed, r.retried), (1, 1));
    // Not due yet at once; due within the first ceiling (1 s).
    clock.advance(Duration::from_millis(1_001));
    let r = w.run_once().await.expect("pass");
    assert_eq!(
        (r.claimed, r.retried),
        (1, 1),
        "second failure, with Retry-After: 30"
    );
    // Retry-After is a floor: nothing at +29 s, the retry at +30 s.
    clock.advance(Duration::from_secs(29));
    assert_eq!(w.run_once().await.expect("pass").claimed, 0);
    clock.advance(Duration::from_secs(1));
    let r = w.run_once().await.expect("pass");
    assert_eq!((r.claimed, r.delivered), (1, 1));
    assert_eq!(dest.calls(), 3);
    assert_eq!(state_counts(&store).await.get("delivered"), Some(&1));
    assert!(
        store
            .dead_letters(&DeadLetterFilter::default())
            .await
            .expect("dlq")
            .is_empty()
    );
}

async fn fhir_permanent_and_exhausted_are_parked(backend: Backend) {
    let (_db, store, clock) = open(backend).await;
    let set = packs();
    ingest(&store, &set, &visit("p", "facility")).await;
    catch_up(&clock);
    let dest = ScriptedFhir::default().then(Err(SinkFailure {
        retryable: false,
        retry_after: None,
        message: "HTTP 412: multiple-matches: Failed to CREATE resource with match URL".into(),
    }));
    let w = fhir_worker(&store, dest, &clock, RETRY);
    assert_eq!(w.run_once().await.expect("pass").parked, 1);
    let dl = store
        .dead_letters(&DeadLetterFilter::default())
        .await
        .expect("dlq");
    assert_eq!(dl.len(), 1);
    assert_eq!(
        (dl[0].stage.as_str(), dl[0].reason_code.as_str()),
        ("fhir", "fhir_rejected")
    );
    assert!(dl[0].reason.contains("HTTP 412"));
    assert_eq!(dl[0].event_id.as_deref(), Some("p"));
    // Replay after a fix maps the event again from its raw payload.
    let limits = kiungo::ingest::Limits { max_bytes: 1 << 20 };
    let replayed = kiungo::dlq::replay(&store, &set, limits, dl[0].id, "ops")
        .await
        .expect("replay");
    catch_up(&clock);
    assert_eq!(
        replayed,
        kiungo::dlq::ReplayResult::Remapped {
            mapping: "cht-anc-visit".into()
        }
    );
    assert_eq!(
        fhir_worker(&store, ScriptedFhir::default(), &clock, RETRY)
            .run_once()
            .await
            .expect("pass")
            .delivered,
        1
    );
    let again = kiungo::dlq::replay(&store, &set, limits, dl[0].id, "ops")
        .await
        .expect("replay");
    catch_up(&clock);
    assert_eq!(
        again,
        kiungo::dlq::ReplayResult::NotOpen,
        "a resolved dead letter is not replayed twice"
    );

    // Always 503: retried until the maximum age (60 s), then parked.
    ingest(&store, &set, &visit("q", "facility")).await;
    catch_up(&clock);
    let always = ScriptedFhir::default();
    for _ in 0..50 {
        always
            .script
            .lock()
            .expect("lock")
            .push_back(Err(transient(None)));
    }
    let w = fhir_worker(&store, always.clone(), &clock, RETRY);
    let mut parked = 0;
    for _ in 0..40 {
        parked += w.run_once().await.expect("pass").parked;
        clock.advance(Duration::from_secs(8));
        if parked > 0 {
            break;
        }
    }
    assert_eq!(parked, 1);
    assert!(
        always.calls() >= 6,
        "retried with backoff before giving up: {}",
        always.calls()
    );
    let dl = store
        .dead_letters(&DeadLetterFilter {
            reason_code: Some("fhir_retries_exhausted".into()),
            ..Default::default()
        })
        .await
        .expect("dlq");
    assert_eq!(dl.len(), 1);
    // Replay puts it back, due now.
    let outbox_id: i64 = dl[0]
        .message_id
        .as_deref()
        .and_then(|m| m.strip_prefix("outbox:"))
        .and_then(|n| n.parse().ok())
        .expect("outbox id");
    assert!(
        store
            .requeue_fhir(outbox_id, clock.now_ms())
            .await
            .expect("requeue")
    );
    assert_eq!(
        fhir_worker(&store, ScriptedFhir::default(), &clock, RETRY)
            .run_once()
            .await
            .expect("pass")
            .delivered,
        1
    );
}

async fn circuit_holds_then_probes(backend: Backend) {
    let (_db, store, clock) = open(backend).await;
    let set = packs();
    for id in ["c1", "c2", "c3"] {
        ingest(&store, &set, &visit(id, "facility")).await;
        catch_up(&clock);
    }
    catch_up(&clock);
    let dest = ScriptedFhir::default()
        .then(Err(transient(None)))
        .then(Err(transient(None)))
        .then(Err(transient(None)));
    let mut w = fhir_worker(&store, dest.clone(), &clock, RETRY);
    w.circuit = Circuit::new(3, Duration::from_secs(20));
    assert_eq!(
        w.run_once().await.expect("pass").retried,
        3,
        "three failures open the circuit"
    );
    clock.advance(Duration::from_secs(10));
    assert!(w.run_once().await.expect("pass").held, "open: nothing sent");
    assert_eq!(dest.calls(), 3);
    clock.advance(Duration::from_secs(10));
    let r = w.run_once().await.expect("pass");
    assert_eq!((r.claimed, r.delivered), (1, 1), "one probe");
    let r = w.run_once().await.expect("pass");
    assert_eq!(r.delivered, 2, "closed again: the rest flows");
}

async fn leases_and_version_order(backend: Backend) {
    let (_db, store, clock) = open(backend).await;
    let set = packs();
    ingest(&store, &set, &visit("v", "facility")).await;
    catch_up(&clock);
    let now = clock.now_ms();
    let first = store.claim_fhir(10, now, 60_000).await.expect("claim");
    assert_eq!(first.len(), 1);
    // A worker died holding it. An edit arrives: the new version waits
    // for the old one, and nobody takes the old one before its lease ends.
    ingest(&store, &set, &visit("v", "outreach")).await;
    catch_up(&clock);
    assert!(
        store
            .claim_fhir(10, now + 1_000, 60_000)
            .await
            .expect("claim")
            .is_empty()
    );
    let again = store
        .claim_fhir(10, now + 61_000, 60_000)
        .await
        .expect("claim");
    assert_eq!(
        again.iter().map(|i| i.id).collect::<Vec<_>>(),
        vec![first[0].id],
        "reclaimed after the lease"
    );
    // The first holder wakes up late: its result no longer counts.
    store
        .record_fhir(
            &first[0],
            &kiungo::store::Delivery::Dead {
                reason_code: "fhir_rejected".into(),
                error: "late".into(),
            },
            now + 61_500,
        )
        .await
        .expect("late record");
    store
        .record_fhir(
            &first[0],
            &kiungo::store::Delivery::Delivered {
                server_ids: vec!["Patient/late".into()],
            },
            now + 61_600,
        )
        .await
        .expect("late record");
    assert_eq!(
        store.outbox_states().await.expect("states"),
        vec![("delivering".to_owned(), 1), ("pending".to_owned(), 1)],
        "the late holder neither parked the bundle nor freed it"
    );
    store
        .record_fhir(
            &again[0],
            &kiungo::store::Delivery::Delivered { server_ids: vec![] },
            now + 62_000,
        )
        .await
        .expect("record");
    let newer = store
        .claim_fhir(10, now + 63_000, 60_000)
        .await
        .expect("claim");
    assert_eq!(newer.len(), 1);
    assert!(newer[0].id > first[0].id);
}

/// A replacement waits while a bundle of the event it replaces is in
/// flight; once that lease runs out, the replaced bundle is not sent again
/// (it would overwrite the replacement's resources) and the replacement
/// goes.
async fn replacement_waits_for_the_replaced_bundle(backend: Backend) {
    let (_db, store, clock) = open(backend).await;
    let set = packs();
    ingest(&store, &set, &version("r1", "facility", None)).await;
    catch_up(&clock);
    let now = clock.now_ms();
    let first = store.claim_fhir(10, now, 60_000).await.expect("claim");
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].event_id, "r1");
    // A replica died holding it; the replacement arrives.
    ingest(&store, &set, &version("r2", "outreach", Some("r1"))).await;
    catch_up(&clock);
    assert!(
        store
            .claim_fhir(10, now + 1_000, 60_000)
            .await
            .expect("claim")
            .is_empty(),
        "the replacement waits for the replaced bundle in flight"
    );
    let next = store
        .claim_fhir(10, now + 61_000, 60_000)
        .await
        .expect("claim");
    assert_eq!(
        ids(&next),
        vec!["r2"],
        "after the lease: the replacement, not the replaced bundle again"
    );
    let states = store.outbox_states().await.expect("states");
    assert_eq!(
        states,
        vec![("delivering".to_owned(), 1), ("superseded".to_owned(), 1)]
    );
}

/// A CHT visit `id` that names `replaces` (or nothing) as the version it
/// replaces.
fn version(id: &str, location: &str, replaces: Option<&str>) -> Value {
    let mut v = visit(id, location);
    v["fields"]["meta"]["instanceID"] = json!(format!("uuid:{id}:{location}"));
    if let Some(old) = replaces {
        v["fields"]["meta"]["deprecatedID"] = json!(format!("uuid:{old}"));
    }
    v
}

async fn deliver(store: &Store, item: &kiungo::store::OutboxItem, now: i64) {
    store
        .record_fhir(
            item,
            &kiungo::store::Delivery::Delivered { server_ids: vec![] },
            now,
        )
        .await
        .expect("record");
}

async fn claimed(store: &Store, now: i64) -> Vec<kiungo::store::OutboxItem> {
    store.claim_fhir(10, now, 60_000).await.expect("claim")
}

fn ids(items: &[kiungo::store::OutboxItem]) -> Vec<&str> {
    items.iter().map(|i| i.event_id.as_str()).collect()
}

/// Claims at `now`, asserts that exactly the outbox row `row` comes back
/// (`why`), and delivers it.
async fn sent_again(store: &Store, now: i64, row: &kiungo::store::OutboxItem, why: &str) {
    let again = claimed(store, now).await;
    assert_eq!(
        again.iter().map(|i| i.id).collect::<Vec<_>>(),
        vec![row.id],
        "{why}"
    );
    deliver(store, &again[0], now).await;
}

/// Replacements committed out of order (replicas, redeliveries): with Y
/// replacing X, an edit Y' of Y that no longer names X is committed and
/// delivered before Y; X's bundle may have reached the server after Y''s
/// and overwritten what they share. When Y withdraws X, the live version
/// (Y') is sent again, after any bundle of X still in flight; with a
/// chain X <- Y <- Z committed as Z, X, Y, the live Z goes again.
async fn out_of_order_replacements_send_the_live_version_last(backend: Backend) {
    let (_db, store, _clock) = open(backend).await;
    let set = packs();
    // Bundles are due from their commit (the wall clock); each part claims
    // well after that, and well within the 60 s leases.
    let due = || kiungo::store::now_ms() + 10_000;
    let now = due();

    // 1. Both delivered when Y arrives.
    ingest_at(&store, &set, &version("a1", "facility", None), Some(1)).await;
    let x = claimed(&store, now).await;
    assert_eq!(ids(&x), vec!["a1"]);
    deliver(&store, &x[0], now).await;
    ingest_at(&store, &set, &version("a2", "outreach", None), Some(3)).await;
    let y_live = claimed(&store, now).await;
    assert_eq!(ids(&y_live), vec!["a2"]);
    deliver(&store, &y_live[0], now).await;
    // Y itself, older than Y': stale, but it withdraws X.
    ingest_at(
        &store,
        &set,
        &version("a2", "facility", Some("a1")),
        Some(2),
    )
    .await;
    sent_again(&store, now + 1, &y_live[0], "the live version goes again").await;
    assert!(claimed(&store, now + 2).await.is_empty(), "once");

    // 2. Both in flight when Y arrives.
    let now = due();
    ingest_at(&store, &set, &version("b1", "facility", None), Some(1)).await;
    let x = claimed(&store, now).await;
    assert_eq!(ids(&x), vec!["b1"]);
    ingest_at(&store, &set, &version("b2", "outreach", None), Some(3)).await;
    let y_live = claimed(&store, now).await;
    assert_eq!(ids(&y_live), vec!["b2"], "nothing links them yet");
    ingest_at(
        &store,
        &set,
        &version("b2", "facility", Some("b1")),
        Some(2),
    )
    .await;
    deliver(&store, &y_live[0], now + 1).await;
    assert!(
        claimed(&store, now + 2).await.is_empty(),
        "due again, but X's bundle is still in flight"
    );
    deliver(&store, &x[0], now + 3).await;
    sent_again(
        &store,
        now + 4,
        &y_live[0],
        "after X's bundle, the live version goes again",
    )
    .await;

    // 3. A chain X <- Y <- Z committed as Z, X, Y.
    let now = due();
    ingest_at(
        &store,
        &set,
        &version("c3", "outreach", Some("c2")),
        Some(3),
    )
    .await;
    let z = claimed(&store, now).await;
    assert_eq!(ids(&z), vec!["c3"]);
    deliver(&store, &z[0], now).await;
    ingest_at(&store, &set, &version("c1", "facility", None), Some(1)).await;
    let x = claimed(&store, now).await;
    assert_eq!(ids(&x), vec!["c1"], "X is not known to be replaced yet");
    ingest_at(
        &store,
        &set,
        &version("c2", "facility", Some("c1")),
        Some(2),
    )
    .await;
    assert!(
        claimed(&store, now + 1).await.is_empty(),
        "Z waits for X's bundle in flight"
    );
    deliver(&store, &x[0], now + 2).await;
    sent_again(
        &store,
        now + 3,
        &z[0],
        "the live end of the chain goes again",
    )
    .await;

    // In order, nothing is sent twice: a fresh replacement's bundle is
    // simply new.
    let now = due();
    ingest_at(&store, &set, &version("d1", "facility", None), Some(1)).await;
    let x = claimed(&store, now).await;
    deliver(&store, &x[0], now).await;
    ingest_at(
        &store,
        &set,
        &version("d2", "outreach", Some("d1")),
        Some(2),
    )
    .await;
    let y = claimed(&store, now + 1).await;
    assert_eq!(ids(&y), vec!["d2"]);
    deliver(&store, &y[0], now + 1).await;
    assert!(claimed(&store, now + 2).await.is_empty());
    let states = state_counts(&store).await;
    assert_eq!(states.get("delivered"), Some(&8), "{states:?}");
    assert_eq!(states.get("pending"), None, "{states:?}");
}

/// DHIS2 that stores pushed values and answers from a script.
#[derive(Debug, Default, Clone)]
struct ScriptedDhis2 {
    script: Script<Dhis2Push>,
    values: Arc<Mutex<HashMap<TotalKey, String>>>,
}

impl Dhis2Destination for ScriptedDhis2 {
    async fn push(&self, values: &[(TotalKey, String)]) -> Result<Dhis2Push, SinkFailure> {
        let answer = self
            .script
            .lock()
            .expect("lock")
            .pop_front()
            .unwrap_or_else(|| Ok(Dhis2Push::default()));
        if let Ok(push) = &answer
            && push.batch_rejected.is_none()
        {
            let mut stored = self.values.lock().expect("lock");
            for (i, (k, v)) in values.iter().enumerate() {
                if !push.rejected.contains_key(&i) {
                    stored.insert(k.clone(), v.clone());
                }
            }
        }
        answer
    }
}

/// How many DHIS2 dead letters are open.
async fn open_dhis2_letters(store: &Store) -> usize {
    store
        .dead_letters(&DeadLetterFilter {
            state: Some("open".into()),
            stage: Some("dhis2".into()),
            ..Default::default()
        })
        .await
        .expect("dlq")
        .len()
}

/// The scripted DHIS2's next push refuses its first value (E7640).
fn refuse_next(dest: &ScriptedDhis2) {
    dest.script.lock().expect("lock").push_back(Ok(Dhis2Push {
        batch_rejected: None,
        rejected: HashMap::from([(0, ("E7640".to_owned(), "expired".to_owned()))]),
    }));
}

/// Every total to be pushed again (the re-sync), due by the next pass.
async fn remark_all(store: &Store, clock: &ManualClock) {
    store
        .remark_all_totals(clock.now_ms())
        .await
        .expect("remark");
    clock.advance(Duration::from_secs(3));
}

fn dhis2_worker(
    store: &Store,
    dest: ScriptedDhis2,
    clock: &ManualClock,
) -> Dhis2Worker<ScriptedDhis2> {
    support::dhis2_worker(store, dest, clock, RETRY)
}

async fn dhis2_totals_follow_edits_and_conflicts_are_parked(backend: Backend) {
    let (_db, store, clock) = open(backend).await;
    let set = packs();
    for id in ["d1", "d2", "d3"] {
        ingest(&store, &set, &visit(id, "facility")).await;
        catch_up(&clock);
    }
    let dest = ScriptedDhis2::default();
    let w = dhis2_worker(&store, dest.clone(), &clock);
    // The push delay: nothing before 2 s.
    assert_eq!(w.run_once().await.expect("pass").claimed, 0);
    clock.advance(Duration::from_secs(3));
    assert_eq!(w.run_once().await.expect("pass").delivered, 1);
    let values = dest.values.lock().expect("lock").clone();
    assert_eq!(
        values.values().cloned().collect::<Vec<_>>(),
        vec!["3".to_owned()],
        "three facility visits"
    );

    // An edit moves d3 to outreach: facility becomes 2, outreach 1.
    ingest(&store, &set, &visit("d3", "outreach")).await;
    catch_up(&clock);
    clock.advance(Duration::from_secs(3));
    assert_eq!(w.run_once().await.expect("pass").delivered, 2);
    let mut got: Vec<String> = dest
        .values
        .lock()
        .expect("lock")
        .values()
        .cloned()
        .collect();
    got.sort();
    assert_eq!(got, vec!["1".to_owned(), "2".to_owned()]);
    assert_eq!(store.dhis2_pushed().await.expect("pushed").len(), 2);

    // A transient failure keeps them dirty on the schedule; a conflict on
    // one value parks that value with DHIS2's words and stores the other.
    ingest(&store, &set, &visit("d4", "outreach")).await;
    catch_up(&clock);
    ingest(&store, &set, &visit("d5", "facility")).await;
    catch_up(&clock);
    dest.script
        .lock()
        .expect("lock")
        .push_back(Err(transient(None)));
    dest.script.lock().expect("lock").push_back(Ok(Dhis2Push {
        batch_rejected: None,
        rejected: HashMap::from([(
            0,
            (
                "E7641".to_owned(),
                "Period: `202403` is after latest open future period".to_owned(),
            ),
        )]),
    }));
    clock.advance(Duration::from_secs(3));
    assert_eq!(w.run_once().await.expect("pass").retried, 2);
    clock.advance(Duration::from_secs(2));
    let r = w.run_once().await.expect("pass");
    assert_eq!((r.delivered, r.parked), (1, 1));
    let dl = store
        .dead_letters(&DeadLetterFilter {
            reason_code: Some("E7641".into()),
            ..Default::default()
        })
        .await
        .expect("dlq");
    assert_eq!(dl.len(), 1);
    assert_eq!(dl[0].stage, "dhis2");
    assert!(dl[0].reason.contains("after latest open future period"));
    let full = store
        .dead_letter(dl[0].id)
        .await
        .expect("get")
        .expect("found");
    let detail: Value = serde_json::from_slice(&full.payload.expect("payload")).expect("json");
    assert!(detail["dataElement"].is_string() && detail["value"].is_string());
    // Nothing left dirty.
    assert_eq!(store.stats().await.expect("stats").dhis2_dirty, 0);

    // The apps learn it: the refused total's event is parked for DHIS2
    // (although an earlier value of that total was accepted), the other
    // delivered; the status messages say the same.
    let (refused, accepted) = if detail["categoryOptionCombo"] == "PT59n8BQbqM" {
        ("d4", "d5")
    } else {
        ("d5", "d4")
    };
    for (event, want) in [(refused, "parked"), (accepted, "delivered")] {
        let status = store.event_status(event, None).await.expect("status");
        let dhis2 = status[0]
            .destinations
            .iter()
            .find(|d| d.destination == "dhis2")
            .expect("dhis2 status");
        assert_eq!(dhis2.status, want, "{event}: {status:?}");
    }
    let messages = store.pending_statuses(1000).await.expect("statuses");
    let about = |event: &str, status: &str| {
        messages.iter().any(|m| {
            m.destination == "dhis2" && m.status == status && m.event_id.as_deref() == Some(event)
        })
    };
    assert!(about(refused, "parked"), "{messages:#?}");
    assert!(about(accepted, "delivered"), "{messages:#?}");
    assert!(!about(refused, "delivered"), "{messages:#?}");
    let origins: Vec<_> = messages.iter().map(|m| m.origin.clone()).collect();
    store.mark_statuses(&origins).await.expect("mark");
    assert!(
        store
            .pending_statuses(1000)
            .await
            .expect("statuses")
            .is_empty(),
        "published statuses are not sent again"
    );

    // The scheduled re-sync pushes every total again, with the same values.
    let before = dest.values.lock().expect("lock").clone();
    let marked = store
        .remark_all_totals(clock.now_ms())
        .await
        .expect("remark");
    assert_eq!(marked, 2, "the facility and the outreach total");
    clock.advance(Duration::from_secs(3));
    let r = w.run_once().await.expect("pass");
    assert_eq!((r.delivered, r.parked), (2, 0));
    let after = dest.values.lock().expect("lock").clone();
    let totals: HashMap<TotalKey, String> = store
        .dhis2_totals()
        .await
        .expect("totals")
        .into_iter()
        .map(|(k, v)| (k, kiungo::store::format_number(v)))
        .collect();
    assert_eq!(
        after, totals,
        "DHIS2 holds every current total after the re-sync"
    );
    assert_eq!(before.len(), 2);
}

/// A total still changing is held back until it settles (`push_delay`
/// without a change), or until `max_push_delay` after its first change.
/// The store stamps changes with the wall clock, so the claims' `now` is
/// placed between wall-clock readings taken around each commit: the
/// outcome holds however slow the machine is.
async fn dhis2_totals_wait_until_settled(backend: Backend) {
    let (_db, store, _clock) = open(backend).await;
    let set = packs();
    const HOUR: i64 = 3_600_000;
    let claim = |now: i64, settle: i64, max_wait: i64| {
        let store = store.clone();
        async move {
            store
                .claim_totals(100, now, settle, max_wait, 0)
                .await
                .expect("claim")
                .len()
        }
    };
    let t_before = kiungo::store::now_ms();
    ingest(&store, &set, &visit("s1", "facility")).await;
    let t_first = kiungo::store::now_ms();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let t_second = kiungo::store::now_ms();
    ingest(&store, &set, &visit("s2", "facility")).await;
    let t_after = kiungo::store::now_ms();
    assert!(t_first >= t_before && t_second >= t_first + 20);

    // Changed within the settling time, first changed within the longest
    // wait: held back.
    assert_eq!(claim(t_second + 10, HOUR, HOUR).await, 0);
    assert_eq!(
        claim(t_after + 1_000, 1_001 + (t_after - t_before), HOUR).await,
        0
    );
    // Still changing, but first changed longer ago than the longest wait
    // (t_first <= t_second - 20): pushed.
    assert_eq!(claim(t_second + 5, HOUR, 15).await, 1);
    // Settled: unchanged for the settling time since the second change
    // (at most t_after): pushed (the previous claim's lease ran out).
    assert_eq!(claim(t_after + 1_000, 1_000, HOUR).await, 1);

    // A change while a push is in flight keeps the total dirty, and the
    // longest wait starts again from that push: a total that keeps
    // changing goes out once per longest wait, not at every pass.
    let now = kiungo::store::now_ms() + 2_000;
    let claimed = store
        .claim_totals(100, now, 0, 0, 60_000)
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 1);
    ingest(&store, &set, &visit("s3", "facility")).await;
    let pushed: Vec<_> = claimed
        .into_iter()
        .map(|t| (t, kiungo::store::TotalResult::Pushed))
        .collect();
    store.finish_totals(&pushed, now).await.expect("finish");
    assert_eq!(store.stats().await.expect("stats").dhis2_dirty, 1);
    assert_eq!(claim(now + 5, HOUR, 15).await, 0, "the wait starts again");
    assert_eq!(claim(now + 20, HOUR, 15).await, 1);
}

/// Several events per transaction: fewer requests, an entry the events
/// share sent once, every event recorded; a transaction the server refuses
/// is sent again event by event, so only the bad event is parked; a
/// transient failure retries every event of it.
async fn several_events_share_a_transaction(backend: Backend) {
    let (_db, store, clock) = open(backend).await;
    let set = packs();
    for i in 0..5 {
        ingest(&store, &set, &visit(&format!("g{i}"), "facility")).await;
        catch_up(&clock);
    }
    catch_up(&clock);
    let dest = ScriptedFhir::default();
    let w = FhirWorker {
        per_transaction: 4,
        withdraw: kiungo::delivery::withdrawal::WithdrawMode::Delete,
        ..fhir_worker(&store, dest.clone(), &clock, RETRY)
    };
    let r = w.run_once().await.expect("pass");
    assert_eq!((r.claimed, r.delivered), (5, 5));
    let calls = dest.calls.lock().expect("lock").clone();
    assert_eq!(calls.len(), 2, "five events in transactions of up to four");
    let entries = |b: &str| -> Vec<Value> {
        let v: Value = serde_json::from_str(b).expect("json");
        v["entry"].as_array().cloned().unwrap_or_default()
    };
    let single = entries(&calls[1]);
    let four = entries(&calls[0]);
    // The visits share their Patient (one conditional create): it is sent
    // once in the transaction of four, every other entry once per event.
    let patients = |e: &[Value]| {
        e.iter()
            .filter(|x| x["resource"]["resourceType"] == "Patient")
            .count()
    };
    assert_eq!(patients(&single), 1);
    assert_eq!(patients(&four), 1);
    assert_eq!(four.len(), 1 + 4 * (single.len() - 1));
    assert_eq!(state_counts(&store).await.get("delivered"), Some(&5));

    // A refused transaction: sent again one event at a time.
    for i in 5..8 {
        ingest(&store, &set, &visit(&format!("g{i}"), "facility")).await;
        catch_up(&clock);
    }
    catch_up(&clock);
    let refused = || {
        Err(SinkFailure {
            retryable: false,
            retry_after: None,
            message: "HTTP 400: Observation.valueQuantity: invalid".into(),
        })
    };
    let dest = ScriptedFhir::default()
        .then(refused())
        .then(Ok(vec!["Patient/1".into()]))
        .then(refused())
        .then(Ok(vec!["Patient/1".into()]));
    let w = FhirWorker {
        per_transaction: 4,
        withdraw: kiungo::delivery::withdrawal::WithdrawMode::Delete,
        ..fhir_worker(&store, dest.clone(), &clock, RETRY)
    };
    let r = w.run_once().await.expect("pass");
    assert_eq!((r.claimed, r.delivered, r.parked), (3, 2, 1));
    assert_eq!(dest.calls(), 4, "one transaction of three, then each alone");
    let dl = store
        .dead_letters(&DeadLetterFilter::default())
        .await
        .expect("dlq");
    assert_eq!(dl.len(), 1);
    assert_eq!(dl[0].reason_code, "fhir_rejected");

    // A transient failure: every event of the transaction waits for its
    // retry; one request, one failure for the circuit.
    for i in 8..10 {
        ingest(&store, &set, &visit(&format!("g{i}"), "facility")).await;
        catch_up(&clock);
    }
    catch_up(&clock);
    let dest = ScriptedFhir::default().then(Err(transient(None)));
    let w = FhirWorker {
        per_transaction: 4,
        withdraw: kiungo::delivery::withdrawal::WithdrawMode::Delete,
        ..fhir_worker(&store, dest.clone(), &clock, RETRY)
    };
    let r = w.run_once().await.expect("pass");
    assert_eq!((r.claimed, r.retried), (2, 2));
    assert_eq!(dest.calls(), 1);
    clock.advance(Duration::from_secs(10));
    let r = w.run_once().await.expect("pass");
    assert_eq!((r.claimed, r.delivered), (2, 2));
    assert_eq!(dest.calls(), 2, "retried together");
}

/// Issue 14, bug 2: a total DHIS2 refused and later accepts (the same
/// value, sent again by the re-sync) resolves its open dead letter: the
/// event is no longer `parked` for DHIS2, no open dead letter is counted,
/// and the status messages say the same as the event status (one rule).
async fn dhis2_later_acceptance_resolves_the_dead_letter(backend: Backend) {
    let (_db, store, clock) = open(backend).await;
    let set = packs();
    ingest(&store, &set, &visit("r1", "facility")).await;
    catch_up(&clock);
    let dest = ScriptedDhis2::default();
    dest.script.lock().expect("lock").push_back(Ok(Dhis2Push {
        batch_rejected: None,
        rejected: HashMap::from([(
            0,
            (
                "E7640".to_owned(),
                "Current date is past expiry days for period".to_owned(),
            ),
        )]),
    }));
    let w = dhis2_worker(&store, dest.clone(), &clock);
    clock.advance(Duration::from_secs(3));
    assert_eq!(w.run_once().await.expect("pass").parked, 1);
    let dhis2_status = |status: Vec<kiungo::store::EventStatus>| {
        status[0]
            .destinations
            .iter()
            .find(|d| d.destination == "dhis2")
            .map(|d| d.status.clone())
    };
    assert_eq!(
        dhis2_status(store.event_status("r1", None).await.expect("status")).as_deref(),
        Some("parked")
    );
    assert_eq!(open_dhis2_letters(&store).await, 1);
    // The letter names the mapping and the event behind the total, and its
    // detail lists the contributing events.
    let listed = store
        .dead_letters(&DeadLetterFilter {
            stage: Some("dhis2".into()),
            ..Default::default()
        })
        .await
        .expect("dlq");
    assert_eq!(
        (listed[0].mapping.as_deref(), listed[0].event_id.as_deref()),
        (Some("cht-anc-visit"), Some("r1")),
        "{:?}",
        listed[0]
    );
    let full = store
        .dead_letter(listed[0].id)
        .await
        .expect("get")
        .expect("found");
    let detail: serde_json::Value =
        serde_json::from_slice(full.payload.as_deref().expect("detail")).expect("json");
    assert_eq!(
        detail["contributions"],
        serde_json::json!([{"source": "cht", "event_id": "r1", "mapping": "cht-anc-visit"}]),
        "{detail}"
    );
    assert_eq!(detail["more_contributions"], false);
    // Seen by operators on the event itself: the total's letter with
    // DHIS2's code and message, and the message as DHIS2's last error.
    let status = store.event_status("r1", None).await.expect("status");
    let letter = status[0]
        .dead_letters
        .iter()
        .find(|l| l.stage == "dhis2")
        .expect("the DHIS2 letter on the event");
    assert_eq!(
        (letter.reason_code.as_str(), letter.state.as_str()),
        ("E7640", "open")
    );
    let dhis2 = status[0]
        .destinations
        .iter()
        .find(|d| d.destination == "dhis2")
        .expect("dhis2");
    assert!(
        dhis2
            .last_error
            .as_deref()
            .is_some_and(|e| e.starts_with("E7640: Current date is past expiry days")),
        "{dhis2:?}"
    );
    let messages = store.pending_statuses(1000).await.expect("statuses");
    let origins: Vec<_> = messages.iter().map(|m| m.origin.clone()).collect();
    store.mark_statuses(&origins).await.expect("mark");

    // The period is opened again; the re-sync sends the same total, and
    // DHIS2 takes it.
    remark_all(&store, &clock).await;
    let r = w.run_once().await.expect("pass");
    assert_eq!((r.delivered, r.parked), (1, 0));
    assert_eq!(
        open_dhis2_letters(&store).await,
        0,
        "the accepted total's letter is resolved"
    );
    assert_eq!(
        dhis2_status(store.event_status("r1", None).await.expect("status")).as_deref(),
        Some("delivered")
    );
    let by_reason = store.dead_letters_by_reason().await.expect("reasons");
    assert!(
        by_reason.iter().all(|r| r.stage != "dhis2"),
        "{by_reason:?}"
    );
    let messages = store.pending_statuses(1000).await.expect("statuses");
    assert!(
        messages.iter().any(|m| m.destination == "dhis2"
            && m.status == "delivered"
            && m.event_id.as_deref() == Some("r1")),
        "{messages:#?}"
    );
    // Refused again later: the same letter opens again, and both rules
    // say parked.
    refuse_next(&dest);
    remark_all(&store, &clock).await;
    assert_eq!(w.run_once().await.expect("pass").parked, 1);
    assert_eq!(open_dhis2_letters(&store).await, 1);
    assert_eq!(
        dhis2_status(store.event_status("r1", None).await.expect("status")).as_deref(),
        Some("parked")
    );
}

/// The DHIS2 "delivered" a status message tells and `/v1/events/{id}`
/// shows follow the pushes DHIS2 accepted (issue 16): a contribution is
/// delivered once an accepted push included it, even while its total
/// waits to go out again with newer contributions; a push during which a
/// contribution arrived tells no one (the next push does); a refusal after acceptance
/// parks every contributor until DHIS2 accepts the total again. (The
/// round reads only accepted contributions: `plans.rs`.)
async fn dhis2_statuses_follow_accepted_pushes(backend: Backend) {
    let (_db, store, clock) = open(backend).await;
    let set = packs();
    let dhis2_status = |status: Vec<kiungo::store::EventStatus>| {
        status[0]
            .destinations
            .iter()
            .find(|d| d.destination == "dhis2")
            .map(|d| d.status.clone())
    };
    let status_of =
        async |id: &str| dhis2_status(store.event_status(id, None).await.expect("status"));
    // Publishes a round: the DHIS2 statuses told, as (event, status).
    // Every status id told is kept: apps drop a repeated one.
    let ids = std::cell::RefCell::new(Vec::new());
    let round = async || {
        let messages = store.pending_statuses(1000).await.expect("statuses");
        let origins: Vec<_> = messages.iter().map(|m| m.origin.clone()).collect();
        store.mark_statuses(&origins).await.expect("mark");
        ids.borrow_mut().extend(
            messages
                .iter()
                .filter(|m| m.destination == "dhis2" && m.publish)
                .map(|m| m.status_id.clone()),
        );
        let mut told: Vec<(String, String)> = messages
            .into_iter()
            .filter(|m| m.destination == "dhis2" && m.publish)
            .map(|m| (m.event_id.unwrap_or_default(), m.status))
            .collect();
        told.sort();
        told
    };
    let told = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(e, s)| ((*e).to_owned(), (*s).to_owned()))
            .collect()
    };
    for id in ["a1", "a2"] {
        ingest(&store, &set, &visit(id, "facility")).await;
    }
    catch_up(&clock);

    // DHIS2 down: the contributions wait; nothing is told.
    let dest = ScriptedDhis2::default();
    dest.script
        .lock()
        .expect("lock")
        .push_back(Err(transient(None)));
    let w = dhis2_worker(&store, dest.clone(), &clock);
    clock.advance(Duration::from_secs(3));
    assert_eq!(w.run_once().await.expect("pass").retried, 1);
    assert_eq!(round().await, told(&[]));
    assert_eq!(status_of("a1").await.as_deref(), Some("pending"));

    // DHIS2 back: both told once.
    clock.advance(Duration::from_secs(10));
    assert_eq!(w.run_once().await.expect("pass").delivered, 1);
    assert_eq!(
        round().await,
        told(&[("a1", "delivered"), ("a2", "delivered")])
    );
    assert_eq!(round().await, told(&[]), "told once");

    // a3 arrives while the push of a0 is in flight: the value DHIS2
    // accepts lacks a3, and which of the waiting contributions it holds
    // is not known, so a0 and a3 wait for the next push; a1 stays
    // delivered while the total waits to go out again.
    ingest(&store, &set, &visit("a0", "facility")).await;
    catch_up(&clock);
    clock.advance(Duration::from_secs(3));
    let claimed = store
        .claim_totals(100, clock.now_ms(), 0, 0, 60_000)
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 1);
    ingest(&store, &set, &visit("a3", "facility")).await;
    catch_up(&clock);
    let results: Vec<_> = claimed
        .into_iter()
        .map(|t| (t, kiungo::store::TotalResult::Pushed))
        .collect();
    store
        .finish_totals(&results, clock.now_ms())
        .await
        .expect("finish");
    assert_eq!(round().await, told(&[]));
    assert_eq!(status_of("a0").await.as_deref(), Some("pending"));
    assert_eq!(status_of("a3").await.as_deref(), Some("pending"));
    assert_eq!(status_of("a1").await.as_deref(), Some("delivered"));
    clock.advance(Duration::from_secs(3));
    assert_eq!(w.run_once().await.expect("pass").delivered, 1);
    assert_eq!(
        round().await,
        told(&[("a0", "delivered"), ("a3", "delivered")])
    );
    assert_eq!(status_of("a3").await.as_deref(), Some("delivered"));

    // Refused after it was accepted: every contributor is told parked,
    // and none is told delivered while the refusal stands.
    refuse_next(&dest);
    remark_all(&store, &clock).await;
    assert_eq!(w.run_once().await.expect("pass").parked, 1);
    let all = |status: &str| -> Vec<(String, String)> {
        ["a0", "a1", "a2", "a3"]
            .iter()
            .map(|e| ((*e).to_owned(), status.to_owned()))
            .collect()
    };
    assert_eq!(round().await, all("parked"));
    assert_eq!(round().await, told(&[]));
    assert_eq!(status_of("a1").await.as_deref(), Some("parked"));

    // Accepted again: every contributor is told delivered again.
    remark_all(&store, &clock).await;
    assert_eq!(w.run_once().await.expect("pass").delivered, 1);
    assert_eq!(round().await, all("delivered"));
    assert_eq!(status_of("a2").await.as_deref(), Some("delivered"));
    assert_eq!(
        dest.values
            .lock()
            .expect("lock")
            .values()
            .cloned()
            .collect::<Vec<_>>(),
        vec!["4".to_owned()],
        "four facility visits"
    );

    // Refused, then accepted again before any round: nothing to tell,
    // the "delivered" told before stands.
    refuse_next(&dest);
    for _ in 0..2 {
        remark_all(&store, &clock).await;
        w.run_once().await.expect("pass");
    }
    assert_eq!(open_dhis2_letters(&store).await, 0);
    assert_eq!(round().await, told(&[]));
    assert_eq!(status_of("a0").await.as_deref(), Some("delivered"));
    let ids = ids.into_inner();
    let distinct: std::collections::HashSet<&String> = ids.iter().collect();
    assert_eq!(
        distinct.len(),
        ids.len(),
        "a status id told twice: {ids:#?}"
    );
}

/// A store from before migration 0015: contributions the old rule could
/// already tell "delivered" (their total pushed since they arrived, not
/// dirty, not refused) stay ready to tell; the rest wait for their
/// total's next accepted push; those told stay told.
async fn contributions_from_before_0015_are_sorted(backend: Backend) {
    let db = ScratchDb::new(backend).await.expect("db");
    let pool = support::store_before_migration(&db, backend, "0015").await;
    // (event, total's data element, created at, notified)
    let rows = [
        ("ready", "de_pushed", 50, 0),
        ("told", "de_pushed", 60, 1),
        ("dirty", "de_dirty", 50, 0),
        ("late", "de_dirty", 150, 0),
        ("refused", "de_refused", 50, 0),
    ];
    for (event, de, created, notified) in rows {
        for sql in [
            format!(
                "INSERT INTO events (source, event_id, state, mapping, version_hash, versions, \
                 received_at, updated_at) VALUES ('cht', '{event}', 'live', 'm', 'h', 1, 0, 0)"
            ),
            format!(
                "INSERT INTO dhis2_contributions (source, event_id, rule, data_element, period, \
                 org_unit, coc, aoc, aggregation, value, value_num, event_date, created_at, notified) \
                 VALUES ('cht', '{event}', 'r', '{de}', '202601', 'ou', 'coc', 'aoc', 'count', '1', 1, \
                 '2026-01-01', {created}, {notified})"
            ),
        ] {
            sqlx::query(&sql).execute(&pool).await.expect("insert");
        }
    }
    for de in ["de_pushed", "de_dirty", "de_refused"] {
        sqlx::query(&format!(
            "INSERT INTO dhis2_pushed (data_element, period, org_unit, coc, aoc, value, pushed_at) \
             VALUES ('{de}', '202601', 'ou', 'coc', 'aoc', '1', 100)"
        ))
        .execute(&pool)
        .await
        .expect("pushed");
    }
    sqlx::query(
        "INSERT INTO dhis2_dirty (data_element, period, org_unit, coc, aoc, marked_at) \
         VALUES ('de_dirty', '202601', 'ou', 'coc', 'aoc', 0)",
    )
    .execute(&pool)
    .await
    .expect("dirty");
    sqlx::query(
        "INSERT INTO dead_letters (fingerprint, stage, source, reason_code, reason, received_at, \
         last_seen_at, notified) VALUES ('dhis2:de_refused:202601:ou:coc:aoc', 'dhis2', 'dhis2', \
         'E7640', 'expired', 0, 0, 1)",
    )
    .execute(&pool)
    .await
    .expect("letter");
    pool.close().await;

    let store = Store::open(&db.config).await.expect("open migrates");
    let told = |messages: Vec<kiungo::store::StatusMessage>| -> Vec<String> {
        messages
            .into_iter()
            .filter(|m| m.destination == "dhis2")
            .filter_map(|m| m.event_id)
            .collect()
    };
    let messages = store.pending_statuses(100).await.expect("statuses");
    let origins: Vec<_> = messages.iter().map(|m| m.origin.clone()).collect();
    assert_eq!(told(messages), vec!["ready".to_owned()]);
    store.mark_statuses(&origins).await.expect("mark");
    let status = async |id: &str| {
        store.event_status(id, None).await.expect("status")[0]
            .destinations
            .iter()
            .find(|d| d.destination == "dhis2")
            .map(|d| d.status.clone())
    };
    for (event, expected) in [
        ("ready", "delivered"),
        ("told", "delivered"),
        ("dirty", "pending"),
        ("late", "pending"),
        ("refused", "parked"),
    ] {
        assert_eq!(status(event).await.as_deref(), Some(expected), "{event}");
    }
    // The dirty total accepted: its two contributions are told.
    let now = kiungo::store::now_ms();
    let claimed = store
        .claim_totals(100, now, 0, 0, 60_000)
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 1);
    let results: Vec<_> = claimed
        .into_iter()
        .map(|t| (t, kiungo::store::TotalResult::Pushed))
        .collect();
    store.finish_totals(&results, now).await.expect("finish");
    let mut events = told(store.pending_statuses(100).await.expect("statuses"));
    events.sort();
    assert_eq!(events, vec!["dirty".to_owned(), "late".to_owned()]);
}

/// A claimed total names the source and mapping behind it, for the labels
/// of the DHIS2 delivery metrics: the one source and mapping when every
/// contribution shares them, `mixed` once another source contributes.
async fn dhis2_totals_name_their_source_and_mapping(backend: Backend) {
    let (_db, store, _clock) = open(backend).await;
    let set = packs();
    ingest(&store, &set, &visit("m1", "facility")).await;
    ingest(&store, &set, &visit("m2", "facility")).await;
    let far = kiungo::store::now_ms() + 60_000;
    let claimed = store.claim_totals(100, far, 0, 0, 1).await.expect("claim");
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].source, "cht");
    assert_eq!(claimed[0].mapping, "cht-anc-visit");

    // The same visit arriving from another source adds to the same total.
    ingest_as(
        &store,
        &set,
        &visit("m3", "facility"),
        None,
        "cht-district-b",
    )
    .await;
    let far = kiungo::store::now_ms() + 60_000;
    let claimed = store.claim_totals(100, far, 0, 0, 1).await.expect("claim");
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].source, kiungo::store::MIXED);
    assert_eq!(claimed[0].mapping, "cht-anc-visit", "one mapping still");
    assert_eq!(claimed[0].value, "3");
}

/// A refused total whose only event is edited away is withdrawn: DHIS2
/// never accepted a value of it, so nothing is sent to delete it, and its
/// refusal is resolved (no open dead letter for a value no event makes).
/// A withdrawn total DHIS2 does hold is still deleted.
async fn dhis2_withdrawn_total_never_accepted_is_not_sent(backend: Backend) {
    let (_db, store, clock) = open(backend).await;
    let set = packs();
    ingest(&store, &set, &visit("w1", "facility")).await;
    catch_up(&clock);
    let dest = ScriptedDhis2::default();
    dest.script.lock().expect("lock").push_back(Ok(Dhis2Push {
        batch_rejected: None,
        rejected: HashMap::from([(0, ("E7640".to_owned(), "Period is closed".to_owned()))]),
    }));
    let w = dhis2_worker(&store, dest.clone(), &clock);
    clock.advance(Duration::from_secs(3));
    assert_eq!(w.run_once().await.expect("pass").parked, 1);
    assert_eq!(open_dhis2_letters(&store).await, 1);

    // The edit moves w1 to outreach: the facility total has no
    // contribution left and was never accepted.
    ingest(&store, &set, &visit("w1", "outreach")).await;
    catch_up(&clock);
    clock.advance(Duration::from_secs(3));
    let r = w.run_once().await.expect("pass");
    assert_eq!((r.withdrawn_unsent, r.delivered), (1, 1), "{r:?}");
    let sent = dest.values.lock().expect("lock").clone();
    assert_eq!(sent.len(), 1, "only the outreach total went out: {sent:?}");
    assert_eq!(sent.values().next().map(String::as_str), Some("1"));
    assert_eq!(
        open_dhis2_letters(&store).await,
        0,
        "the refusal is resolved"
    );
    assert_eq!(store.stats().await.expect("stats").dhis2_dirty, 0);

    // Edited back (a new revision): the outreach total, which DHIS2
    // holds, is deleted (sent empty); the facility total is pushed again.
    let mut back = visit("w1", "facility");
    back["_rev"] = json!("3-edited-back");
    ingest(&store, &set, &back).await;
    catch_up(&clock);
    clock.advance(Duration::from_secs(3));
    let r = w.run_once().await.expect("pass");
    assert_eq!((r.withdrawn_unsent, r.delivered), (0, 2), "{r:?}");
    let mut sent: Vec<String> = dest
        .values
        .lock()
        .expect("lock")
        .values()
        .cloned()
        .collect();
    sent.sort();
    assert_eq!(sent, vec![String::new(), "1".to_owned()]);
}

kiungo::on_both_backends!(
    fhir_retries_then_delivers,
    fhir_permanent_and_exhausted_are_parked,
    circuit_holds_then_probes,
    leases_and_version_order,
    replacement_waits_for_the_replaced_bundle,
    out_of_order_replacements_send_the_live_version_last,
    dhis2_totals_follow_edits_and_conflicts_are_parked,
    dhis2_totals_wait_until_settled,
    several_events_share_a_transaction,
    dhis2_later_acceptance_resolves_the_dead_letter,
    dhis2_statuses_follow_accepted_pushes,
    contributions_from_before_0015_are_sorted,
    dhis2_totals_name_their_source_and_mapping,
    dhis2_withdrawn_total_never_accepted_is_not_sent,
);
