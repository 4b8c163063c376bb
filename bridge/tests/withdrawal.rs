//! FHIR withdrawal on edits (issue 18), on both backends, against the
//! sandbox FHIR server (in process, real HTTP) with a clock moved by hand:
//! after a CHT edit with a new id, a Kobo correction that drops resources,
//! a chain of edits arriving out of order, and a crash between the
//! server applying a replacement and Kiungo recording it, the server holds
//! exactly the live versions' resources.

mod support;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kiungo::delivery::circuit::Circuit;
use kiungo::delivery::retry::{ManualClock, RetryParams};
use kiungo::delivery::withdrawal::WithdrawMode;
use kiungo::delivery::{FhirDestination, FhirWorker, SinkFailure};
use kiungo::sandbox::{Sandbox, SandboxConfig};
use kiungo::store::scratch::ScratchDb;
use kiungo::store::{Backend, DeadLetterFilter, Ingest, Outputs, Store};
use kiungo_connectors::auth::AuthConfig;
use kiungo_connectors::fhir::{FhirClient, FhirConfig};
use kiungo_mappings::{Event, MappingSet};
use serde_json::{Value, json};

use support::{cht_visit, packs, packs_dir};

const RETRY: RetryParams = RetryParams {
    base_delay: Duration::from_secs(1),
    max_delay: Duration::from_secs(8),
    max_age: Duration::from_secs(3600),
};

/// The sandbox's FHIR server, through the real client; `refuse_deletes`
/// answers 409 to a transaction holding a `DELETE` (a registry that
/// forbids them, or a resource referenced elsewhere).
#[derive(Clone)]
struct Server {
    client: Arc<FhirClient>,
    refuse_deletes: Arc<Mutex<bool>>,
    sent: Arc<Mutex<Vec<String>>>,
}

impl FhirDestination for Server {
    async fn transaction(
        &self,
        bundle: &str,
        traceparent: Option<&str>,
    ) -> Result<Vec<String>, SinkFailure> {
        self.sent.lock().expect("lock").push(bundle.to_owned());
        if *self.refuse_deletes.lock().expect("lock") && bundle.contains(r#""method":"DELETE""#) {
            return Err(SinkFailure {
                retryable: false,
                retry_after: None,
                message: "HTTP 409: resource is referenced by other resources".into(),
            });
        }
        FhirDestination::transaction(self.client.as_ref(), bundle, traceparent).await
    }
}

struct Rig {
    _db: ScratchDb,
    store: Store,
    clock: ManualClock,
    sandbox: Sandbox,
    server: Server,
    set: MappingSet,
}

impl Rig {
    async fn new(backend: Backend) -> Self {
        let db = ScratchDb::new(backend).await.expect("scratch db");
        let store = Store::open(&db.config).await.expect("store");
        let sandbox = Sandbox::start(SandboxConfig::for_test())
            .await
            .expect("sandbox");
        let client =
            FhirClient::new(FhirConfig::new(sandbox.fhir_url(), AuthConfig::None)).expect("client");
        Self {
            _db: db,
            store,
            clock: ManualClock::at(kiungo::store::now_ms()),
            sandbox,
            server: Server {
                client: Arc::new(client),
                refuse_deletes: Arc::new(Mutex::new(false)),
                sent: Arc::new(Mutex::new(Vec::new())),
            },
            set: packs(),
        }
    }

    fn worker(&self, withdraw: WithdrawMode) -> FhirWorker<Server> {
        FhirWorker {
            store: self.store.clone(),
            destination: self.server.clone(),
            retry: RETRY,
            circuit: Circuit::new(100, Duration::from_secs(30)),
            clock: Arc::new(self.clock.clone()),
            batch: 10,
            per_transaction: 4,
            withdraw,
            lease: Duration::from_secs(60),
            idle: Duration::from_millis(10),
            wake: None,
        }
    }

    async fn ingest(&self, source: &str, payload: &Value) {
        let mapped = self
            .set
            .map(&Event {
                source: source.into(),
                message_id: None,
                payload: Arc::new(payload.clone()),
            })
            .expect("maps");
        let ing = Ingest {
            source: source.into(),
            queue: None,
            message_id: None,
            version_ts: None,
            received_at: kiungo::store::now_ms(),
            payload: serde_json::to_vec(payload).expect("bytes"),
            headers: None,
            result: Ok(Outputs::from(mapped)),
        };
        self.store.commit(&[ing]).await.expect("commit");
    }

    /// Runs passes until nothing is due (bounded).
    async fn drain(&self, withdraw: WithdrawMode) {
        // Bundles are due from their commit's wall-clock time: the hand
        // clock catches up with it first.
        let behind = kiungo::store::now_ms() - kiungo::delivery::retry::Clock::now_ms(&self.clock);
        if behind >= 0 {
            self.clock
                .advance(Duration::from_millis(behind.unsigned_abs() + 1));
        }
        let worker = self.worker(withdraw);
        for _ in 0..20 {
            let report = worker.run_once().await.expect("pass");
            if report.claimed == 0 {
                return;
            }
        }
        panic!("the outbox did not drain in 20 passes");
    }

    /// Every `Type/id` on the server.
    fn on_server(&self) -> BTreeSet<String> {
        resources_of(&self.sandbox.fhir_resources())
    }

    fn deleted(&self) -> BTreeSet<String> {
        strings(&self.sandbox.fhir_resources()["deleted"])
    }

    fn entered_in_error(&self) -> BTreeSet<String> {
        strings(&self.sandbox.fhir_resources()["entered_in_error"])
    }
}

fn strings(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn resources_of(listing: &Value) -> BTreeSet<String> {
    listing["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|r| {
            format!(
                "{}/{}",
                r["resourceType"].as_str().expect("type"),
                r["id"].as_str().expect("id")
            )
        })
        .collect()
}

/// The `Type/id`s an event's mapping writes with PUT (what Kiungo places
/// for it) and the types it creates conditionally (shared, never
/// withdrawn).
fn puts(set: &MappingSet, source: &str, payload: &Value) -> BTreeSet<String> {
    let mapped = set
        .map(&Event {
            source: source.into(),
            message_id: None,
            payload: Arc::new(payload.clone()),
        })
        .expect("maps");
    Outputs::from(mapped).puts.into_iter().collect()
}

/// What the server holds apart from conditional creates (Patients).
fn placed(all: &BTreeSet<String>) -> BTreeSet<String> {
    all.iter()
        .filter(|r| !r.starts_with("Patient/"))
        .cloned()
        .collect()
}

fn kobo_positive() -> Value {
    let path = packs_dir().join("kobo-malaria-rdt/fixtures/rdt-positive-child-act.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("json")
}

/// The positive RDT corrected to negative, as Kobo sends an edit: a new
/// instance id naming the old one as `deprecatedID`.
fn kobo_corrected_negative() -> Value {
    let mut v = kobo_positive();
    v["meta/instanceID"] = json!("uuid:9d1e2f3a-4b5c-4d6e-8f70-81a2b3c4d5e6");
    v["_uuid"] = json!("9d1e2f3a-4b5c-4d6e-8f70-81a2b3c4d5e6");
    v["meta/deprecatedID"] = json!("uuid:3b0f3a4e-7c1d-4b8e-9f2a-5d6c7e8f9a01");
    v["rdt/rdt_result"] = json!("negative");
    v["treatment/act_given"] = json!("no");
    v.as_object_mut()
        .expect("object")
        .remove("treatment/act_pack");
    v
}

async fn cht_edit_with_a_new_id(backend: Backend) {
    let rig = Rig::new(backend).await;
    let original = cht_visit("visit-a", "facility", "");
    rig.ingest("cht", &original).await;
    rig.drain(WithdrawMode::Delete).await;
    let before = rig.on_server();
    let original_puts = puts(&rig.set, "cht", &original);
    assert!(original_puts.is_subset(&before), "{before:?}");

    // CHT gives the edit a new id and names the original.
    let edit = cht_visit("visit-b", "outreach", "visit-a");
    rig.ingest("cht", &edit).await;
    rig.drain(WithdrawMode::Delete).await;

    let after = rig.on_server();
    let edit_puts = puts(&rig.set, "cht", &edit);
    assert_eq!(
        placed(&after),
        edit_puts,
        "the server holds exactly the edit's resources"
    );
    assert!(
        original_puts.is_subset(&rig.deleted()),
        "the original's resources were deleted: {:?}",
        rig.deleted()
    );
    // The Patient matched by identifier is shared: never withdrawn.
    assert!(after.iter().any(|r| r.starts_with("Patient/")));
    // Both events show the withdrawal.
    let status = rig
        .store
        .event_status("visit-a", Some("cht"))
        .await
        .expect("status");
    assert_eq!(status[0].withdrawn.len(), original_puts.len());
    assert!(
        status[0]
            .withdrawn
            .iter()
            .all(|w| w.method == "DELETE" && w.by_event_id == "visit-b" && w.withdrawn_at > 0)
    );
    let by = rig
        .store
        .event_status("visit-b", Some("cht"))
        .await
        .expect("status");
    assert_eq!(by[0].withdrawn.len(), original_puts.len());
    assert_eq!(
        rig.store.placed_by("cht", "visit-a").await.expect("placed"),
        Vec::<String>::new()
    );
    // The app hears `withdrawn` for the original, once.
    let statuses = rig.store.pending_statuses(100).await.expect("statuses");
    let withdrawn: Vec<_> = statuses
        .iter()
        .filter(|s| s.status == "withdrawn")
        .collect();
    assert_eq!(withdrawn.len(), 1, "{statuses:?}");
    assert_eq!(withdrawn[0].event_id.as_deref(), Some("visit-a"));
    rig.store
        .mark_statuses(&[withdrawn[0].origin.clone()])
        .await
        .expect("mark");
    let again = rig.store.pending_statuses(100).await.expect("statuses");
    assert!(again.iter().all(|s| s.status != "withdrawn"), "{again:?}");
    rig.sandbox.stop().await;
}

async fn an_edit_of_the_same_id_that_drops_resources(backend: Backend) {
    let rig = Rig::new(backend).await;
    let with_vitals = cht_visit("visit-c", "facility", "");
    rig.ingest("cht", &with_vitals).await;
    rig.drain(WithdrawMode::Delete).await;
    // The same event again, without its vitals: fewer Observations.
    let path = packs_dir().join("cht-anc/fixtures/anc-visit-3-outreach-no-vitals.json");
    let mut without: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("json");
    without["_id"] = json!("visit-c");
    without["fields"]["meta"]["instanceID"] = json!("uuid:visit-c");
    without["fields"]["meta"]["deprecatedID"] = json!("");
    let old = puts(&rig.set, "cht", &with_vitals);
    let new = puts(&rig.set, "cht", &without);
    assert!(
        !old.is_subset(&new),
        "the fixture must drop a resource: {old:?} {new:?}"
    );
    rig.ingest("cht", &without).await;
    rig.drain(WithdrawMode::Delete).await;
    assert_eq!(placed(&rig.on_server()), new);
    rig.sandbox.stop().await;
}

async fn a_kobo_correction_drops_the_diagnosis(backend: Backend) {
    let rig = Rig::new(backend).await;
    let positive = kobo_positive();
    rig.ingest("kobo", &positive).await;
    rig.drain(WithdrawMode::Delete).await;
    let before = rig.on_server();
    assert!(
        before.iter().any(|r| r.starts_with("Condition/")),
        "{before:?}"
    );
    assert!(
        before.iter().any(|r| r.starts_with("MedicationDispense/")),
        "{before:?}"
    );

    let negative = kobo_corrected_negative();
    rig.ingest("kobo", &negative).await;
    rig.drain(WithdrawMode::Delete).await;
    let after = rig.on_server();
    assert_eq!(placed(&after), puts(&rig.set, "kobo", &negative));
    assert!(
        !after.iter().any(|r| r.starts_with("Condition/")),
        "{after:?}"
    );
    assert!(
        !after.iter().any(|r| r.starts_with("MedicationDispense/")),
        "{after:?}"
    );
    rig.sandbox.stop().await;
}

async fn a_chain_of_edits_out_of_order(backend: Backend) {
    let rig = Rig::new(backend).await;
    let a = cht_visit("chain-a", "facility", "");
    let b = cht_visit("chain-b", "outreach", "chain-a");
    let c = cht_visit("chain-c", "facility", "chain-b");
    // A is delivered; then C arrives (naming B, not yet seen), is
    // delivered; then B (naming A) arrives late.
    rig.ingest("cht", &a).await;
    rig.drain(WithdrawMode::Delete).await;
    rig.ingest("cht", &c).await;
    rig.drain(WithdrawMode::Delete).await;
    rig.ingest("cht", &b).await;
    rig.drain(WithdrawMode::Delete).await;
    assert_eq!(
        placed(&rig.on_server()),
        puts(&rig.set, "cht", &c),
        "only the last edit's resources remain"
    );
    // And the other way round: C, then A, then B, none delivered between.
    let rig2 = Rig::new(backend).await;
    rig2.ingest("cht", &c).await;
    rig2.ingest("cht", &a).await;
    rig2.ingest("cht", &b).await;
    rig2.drain(WithdrawMode::Delete).await;
    assert_eq!(placed(&rig2.on_server()), puts(&rig2.set, "cht", &c));
    // In order, each delivered before the next arrives.
    let rig3 = Rig::new(backend).await;
    for v in [&a, &b, &c] {
        rig3.ingest("cht", v).await;
        rig3.drain(WithdrawMode::Delete).await;
    }
    assert_eq!(placed(&rig3.on_server()), puts(&rig3.set, "cht", &c));
    for r in [rig, rig2, rig3] {
        r.sandbox.stop().await;
    }
}

async fn a_crash_after_the_server_applied_the_replacement(backend: Backend) {
    let rig = Rig::new(backend).await;
    let a = cht_visit("crash-a", "facility", "");
    let b = cht_visit("crash-b", "outreach", "crash-a");
    rig.ingest("cht", &a).await;
    rig.drain(WithdrawMode::Delete).await;
    rig.ingest("cht", &b).await;
    // A worker claims B's bundle (with A's withdrawals) and the server
    // applies it; the process dies before recording the result.
    let now = kiungo::store::now_ms();
    let claimed = rig.store.claim_fhir(10, now, 60_000).await.expect("claim");
    assert_eq!(claimed.len(), 1);
    let bundle = kiungo::delivery::withdrawal::with_withdrawals(&claimed[0])
        .expect("B withdraws what A placed");
    FhirDestination::transaction(&rig.server, &bundle, None)
        .await
        .expect("applied");
    assert_eq!(placed(&rig.on_server()), puts(&rig.set, "cht", &b));
    // After the lease, another worker sends it again: the deletes are
    // idempotent and the store learns what is placed.
    let behind = now - kiungo::delivery::retry::Clock::now_ms(&rig.clock);
    rig.clock.advance(Duration::from_millis(
        behind.max(0).unsigned_abs() + 120_000,
    ));
    rig.drain(WithdrawMode::Delete).await;
    assert_eq!(placed(&rig.on_server()), puts(&rig.set, "cht", &b));
    assert_eq!(
        rig.store.placed_by("cht", "crash-a").await.expect("placed"),
        Vec::<String>::new()
    );
    let placed_b: BTreeSet<String> = rig
        .store
        .placed_by("cht", "crash-b")
        .await
        .expect("placed")
        .into_iter()
        .collect();
    assert_eq!(placed_b, puts(&rig.set, "cht", &b));
    rig.sandbox.stop().await;
}

async fn a_refused_withdrawal_is_parked_and_the_edit_delivered(backend: Backend) {
    let rig = Rig::new(backend).await;
    let a = cht_visit("ref-a", "facility", "");
    let b = cht_visit("ref-b", "outreach", "ref-a");
    rig.ingest("cht", &a).await;
    rig.drain(WithdrawMode::Delete).await;
    *rig.server.refuse_deletes.lock().expect("lock") = true;
    rig.ingest("cht", &b).await;
    rig.drain(WithdrawMode::Delete).await;
    let on = rig.on_server();
    assert!(
        puts(&rig.set, "cht", &b).is_subset(&on),
        "the edit is delivered"
    );
    assert!(puts(&rig.set, "cht", &a).is_subset(&on), "the refused stay");
    let letters = rig
        .store
        .dead_letters(&DeadLetterFilter::default())
        .await
        .expect("letters");
    let letter = letters
        .iter()
        .find(|l| l.reason_code == "fhir_withdrawal_refused")
        .expect("the withdrawal is parked");
    assert!(letter.reason.contains("409"), "{}", letter.reason);
    assert_eq!(letter.event_id.as_deref(), Some("ref-b"));
    // Not retried forever: one try with, one without.
    assert_eq!(rig.server.sent.lock().expect("lock").len(), 3);
    rig.sandbox.stop().await;
}

async fn entered_in_error_where_deletes_are_forbidden(backend: Backend) {
    let rig = Rig::new(backend).await;
    let positive = kobo_positive();
    rig.ingest("kobo", &positive).await;
    rig.drain(WithdrawMode::EnteredInError).await;
    let negative = kobo_corrected_negative();
    rig.ingest("kobo", &negative).await;
    rig.drain(WithdrawMode::EnteredInError).await;
    let marked = rig.entered_in_error();
    let old = puts(&rig.set, "kobo", &positive);
    let new = puts(&rig.set, "kobo", &negative);
    let gone: BTreeSet<String> = old.difference(&new).cloned().collect();
    assert!(!gone.is_empty());
    assert!(
        rig.deleted().is_empty(),
        "nothing deleted: {:?}",
        rig.deleted()
    );
    assert_eq!(marked, gone, "every withdrawn resource marked in place");
    let status = rig
        .store
        .event_status("3b0f3a4e-7c1d-4b8e-9f2a-5d6c7e8f9a01", Some("kobo"))
        .await
        .expect("status");
    assert!(
        status
            .iter()
            .flat_map(|s| &s.withdrawn)
            .all(|w| w.method == "entered-in-error"),
        "{status:?}"
    );
    rig.sandbox.stop().await;
}

macro_rules! both {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test]
            async fn $name() {
                super::$name(kiungo::store::Backend::Sqlite).await;
            })*
        }
        mod postgres {
            $(#[tokio::test]
            async fn $name() {
                super::$name(kiungo::store::Backend::Postgres).await;
            })*
        }
    };
}

both!(
    cht_edit_with_a_new_id,
    an_edit_of_the_same_id_that_drops_resources,
    a_kobo_correction_drops_the_diagnosis,
    a_chain_of_edits_out_of_order,
    a_crash_after_the_server_applied_the_replacement,
    a_refused_withdrawal_is_parked_and_the_edit_delivered,
    entered_in_error_where_deletes_are_forbidden,
);
