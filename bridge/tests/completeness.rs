//! Data set completeness against the real store (both backends), with
//! the real DHIS2 value worker and scripted DHIS2s, on a clock moved by
//! hand: registrations wait for the period's end plus the grace and go
//! once per data set, period and org unit; a late value registers at
//! once; withdrawing all of an org unit's values undoes its registration;
//! values still on their way hold a registration back; failures retry on
//! the schedule behind the circuit breaker; a refusal is parked as a
//! DHIS2 dead letter and a replay sends it again; a data set with an
//! attribute category combo is registered once per attribute option combo
//! that holds values, and undone per combo.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod support;

use kiungo::delivery::circuit::{Circuit, CircuitState};
use kiungo::delivery::completeness::due_at;
use kiungo::delivery::retry::{Clock, ManualClock, RetryParams};
use kiungo::delivery::{
    CompletenessDestination, CompletenessWorker, CompletionAnswer, DataSetCache, DataSetMeta,
    Dhis2Destination, Dhis2Push, Dhis2Worker, PassReport, SinkFailure,
};
use kiungo::store::scratch::ScratchDb;
use kiungo::store::{
    Backend, CompletenessKey, CompletenessResult, CompletenessTarget, DeadLetterFilter, Store,
    TotalKey, TotalResult,
};
use kiungo_mappings::period::Calendar;
use kiungo_mappings::{Aggregation, Dhis2Contribution, PeriodType};

/// Reproductive Health (Sierra Leone demo, monthly), two of its data
/// elements (ANC 1st visit by UID, ANC 4th or more by code), and one of
/// Child Health's.
const SET: &str = "QX4ZTUbOt3a";
const ANC1: &str = "fbfJHSPpUQD";
const ANC4_CODE: &str = "code:DE_ANC4";
const BCG: &str = "s46m5MS0hxu";
const OU1: &str = "DiszpKrYNg8";
const OU2: &str = "ImspTQPwCqd";
const OU3: &str = "O6uvpzGd5pu";
const OLD: &str = "202401";
/// The default attribute option combo, and two of a data set's attribute
/// category combo (projects).
const DEFAULT_AOC: &str = "HllvX50cXC0";
const PROJECT_A: &str = "AocProjectA";
const PROJECT_B: &str = "code:PROJECT_B";
const DAY: i64 = 24 * 3600 * 1000;

const RETRY: RetryParams = RetryParams {
    base_delay: Duration::from_secs(1),
    max_delay: Duration::from_secs(8),
    max_age: Duration::from_secs(600),
};

fn contribution(de: &str, period: &str, ou: &str) -> Dhis2Contribution {
    contribution_for(de, period, ou, DEFAULT_AOC)
}

/// A value for attribute option combo `aoc`.
fn contribution_for(de: &str, period: &str, ou: &str, aoc: &str) -> Dhis2Contribution {
    Dhis2Contribution {
        rule: format!("rule-{de}"),
        data_element: de.into(),
        period: period.into(),
        org_unit: ou.into(),
        category_option_combo: "HllvX50cXC0".into(),
        attribute_option_combo: aoc.into(),
        value: 1.into(),
        aggregation: Aggregation::Count,
        date: "2024-01-15".into(),
    }
}

/// Commits version `version` of event `id` with `contributions` (none:
/// its earlier contributions are withdrawn).
async fn commit(store: &Store, id: &str, version: u32, contributions: Vec<Dhis2Contribution>) {
    support::commit_dhis2(store, id, version, contributions).await;
}

/// DHIS2 for the values: stores them, answers from a script, then OK.
#[derive(Debug, Default, Clone)]
struct Values {
    script: Arc<Mutex<VecDeque<Result<Dhis2Push, SinkFailure>>>>,
}

impl Dhis2Destination for Values {
    async fn push(&self, _values: &[(TotalKey, String)]) -> Result<Dhis2Push, SinkFailure> {
        self.script
            .lock()
            .expect("lock")
            .pop_front()
            .unwrap_or_else(|| Ok(Dhis2Push::default()))
    }
}

/// A request: `register` or `undo`, period, org unit, attribute option
/// combo.
type Call = (&'static str, String, String, String);

/// DHIS2 for completeness: one data set, answers from a script, then
/// done; records every request.
#[derive(Debug, Clone)]
struct Registrations {
    sets: BTreeMap<String, DataSetMeta>,
    script: Arc<Mutex<VecDeque<Result<CompletionAnswer, SinkFailure>>>>,
    calls: Arc<Mutex<Vec<Call>>>,
}

impl Default for Registrations {
    fn default() -> Self {
        let meta = DataSetMeta {
            period_type: PeriodType::Monthly,
            data_elements: vec![ANC1.into(), "hfdmMSPBgLG".into(), ANC4_CODE.into()],
        };
        Self {
            sets: BTreeMap::from([(SET.to_owned(), meta)]),
            script: Arc::default(),
            calls: Arc::default(),
        }
    }
}

impl Registrations {
    fn then(&self, answer: Result<CompletionAnswer, SinkFailure>) {
        self.script.lock().expect("lock").push_back(answer);
    }

    /// `(register|undo, period, org unit, combo)` of every request so far.
    fn calls(&self) -> Vec<Call> {
        self.calls.lock().expect("lock").clone()
    }

    fn answer(
        &self,
        what: &'static str,
        key: &CompletenessKey,
    ) -> Result<CompletionAnswer, SinkFailure> {
        assert_eq!(key.data_set, SET);
        self.calls.lock().expect("lock").push((
            what,
            key.period.clone(),
            key.org_unit.clone(),
            key.attribute_option_combo.clone(),
        ));
        self.script
            .lock()
            .expect("lock")
            .pop_front()
            .unwrap_or(Ok(CompletionAnswer::Done))
    }
}

impl CompletenessDestination for Registrations {
    async fn data_set(&self, id: &str) -> Result<DataSetMeta, SinkFailure> {
        self.sets.get(id).cloned().ok_or_else(|| SinkFailure {
            retryable: false,
            retry_after: None,
            message: format!("data set `{id}` not found in DHIS2"),
        })
    }

    async fn register(&self, key: &CompletenessKey) -> Result<CompletionAnswer, SinkFailure> {
        self.answer("register", key)
    }

    async fn undo(&self, key: &CompletenessKey) -> Result<CompletionAnswer, SinkFailure> {
        self.answer("undo", key)
    }
}

fn transient() -> SinkFailure {
    SinkFailure {
        retryable: true,
        retry_after: None,
        message: "HTTP 503: down".into(),
    }
}

struct Setup {
    _db: ScratchDb,
    store: Store,
    clock: ManualClock,
    values: Dhis2Worker<Values>,
    pass: CompletenessWorker<Registrations>,
    dhis2: Registrations,
    push: Values,
}

const GRACE: Duration = Duration::from_secs(2 * 24 * 3600);

async fn setup(backend: Backend, circuit_failures: u32) -> Setup {
    let db = ScratchDb::new(backend).await.expect("db");
    let store = Store::open(&db.config).await.expect("open");
    let clock = ManualClock::at(kiungo::store::now_ms() + 60_000);
    let circuit = Arc::new(Circuit::new(circuit_failures, Duration::from_secs(30)));
    let push = Values::default();
    let dhis2 = Registrations::default();
    let values = Dhis2Worker {
        store: store.clone(),
        destination: push.clone(),
        retry: RETRY,
        circuit: circuit.clone(),
        clock: Arc::new(clock.clone()),
        batch: 100,
        delay: Duration::from_secs(2),
        max_delay: Duration::from_secs(2),
        lease: Duration::from_secs(60),
        idle: Duration::from_millis(10),
        completeness: true,
    };
    let pass = CompletenessWorker {
        store: store.clone(),
        destination: dhis2.clone(),
        data_sets: vec![kiungo::delivery::completeness::CompletenessConfig {
            data_set: SET.into(),
            grace: GRACE,
        }],
        calendar: Calendar::Iso8601,
        retry: RETRY,
        circuit,
        clock: Arc::new(clock.clone()),
        batch: 100,
        recheck: Duration::from_secs(30),
        lease: Duration::from_secs(60),
        metadata_refresh: Duration::from_secs(3600),
        idle: Duration::from_millis(10),
        metadata: DataSetCache::default(),
    };
    Setup {
        _db: db,
        store,
        clock,
        values,
        pass,
        dhis2,
        push,
    }
}

impl Setup {
    /// Pushes every changed total (the clock moved past the settle time).
    async fn push_values(&self) -> PassReport {
        self.clock.advance(Duration::from_secs(3));
        self.values.run_once().await.expect("values pass")
    }

    /// Runs the completeness pass until it claims nothing.
    async fn completeness(&self) -> PassReport {
        let mut total = PassReport::default();
        for _ in 0..10 {
            let r = self.pass.run_once().await.expect("completeness pass");
            total.delivered += r.delivered;
            total.retried += r.retried;
            total.parked += r.parked;
            total.held |= r.held;
            if r.claimed == 0 {
                return total;
            }
        }
        panic!("the completeness pass keeps claiming");
    }

    fn move_to(&self, at: i64) {
        let now = self.clock.now_ms();
        assert!(at >= now, "the clock only moves forward");
        self.clock
            .advance(Duration::from_millis((at - now).unsigned_abs()));
    }

    /// Each row's attribute option combo and whether it is registered.
    async fn registered_by_combo(&self) -> Vec<(String, bool)> {
        self.store
            .completeness_rows(SET)
            .await
            .expect("rows")
            .into_iter()
            .map(|r| (r.key.attribute_option_combo, r.registered))
            .collect()
    }

    async fn registered(&self) -> Vec<(String, String)> {
        self.pass
            .store
            .completeness_rows(SET)
            .await
            .expect("rows")
            .into_iter()
            .filter(|r| r.registered)
            .map(|r| (r.key.period, r.key.org_unit))
            .collect()
    }
}

fn call(what: &'static str, period: &str, ou: &str) -> Call {
    call_for(what, period, ou, DEFAULT_AOC)
}

fn call_for(what: &'static str, period: &str, ou: &str, aoc: &str) -> Call {
    (what, period.to_owned(), ou.to_owned(), aoc.to_owned())
}

async fn registrations_wait_for_the_period_end_plus_grace_and_go_once(backend: Backend) {
    let counted_before = registered_count();
    let s = setup(backend, 5).await;
    // The period the clock is in, and when its registrations are due.
    let today = chrono::DateTime::from_timestamp_millis(s.clock.now_ms())
        .expect("date")
        .date_naive();
    let period = PeriodType::Monthly.period_id(today);
    let (_, due) = due_at(Calendar::Iso8601, &period, GRACE.as_millis() as i64).expect("due");
    commit(&s.store, "e1", 1, vec![contribution(ANC1, &period, OU1)]).await;
    commit(
        &s.store,
        "e2",
        1,
        vec![contribution(ANC4_CODE, &period, OU2)],
    )
    .await;
    // Not in the data set, and a period of another type: no registration.
    commit(&s.store, "e3", 1, vec![contribution(BCG, &period, OU3)]).await;
    commit(&s.store, "e4", 1, vec![contribution(ANC1, "2024Q1", OU3)]).await;
    assert_eq!(s.push_values().await.delivered, 4);
    assert_eq!(s.store.completeness_changes_waiting().await.expect("n"), 4);

    assert_eq!(s.completeness().await.delivered, 0);
    assert_eq!(s.store.completeness_changes_waiting().await.expect("n"), 0);
    let rows = s.store.completeness_rows(SET).await.expect("rows");
    assert_eq!(
        rows.iter()
            .map(|r| (r.key.org_unit.as_str(), r.check_at))
            .collect::<Vec<_>>(),
        vec![(OU1, Some(due)), (OU2, Some(due))],
        "one row per org unit with values of the set, due at the period's end plus the grace"
    );

    s.move_to(due - 1_000);
    assert_eq!(s.completeness().await.delivered, 0);
    assert!(s.dhis2.calls().is_empty(), "{:?}", s.dhis2.calls());

    s.move_to(due);
    assert_eq!(s.completeness().await.delivered, 2);
    assert_eq!(
        s.dhis2.calls(),
        vec![
            call("register", &period, OU1),
            call("register", &period, OU2)
        ]
    );
    assert_eq!(
        s.registered().await,
        vec![(period.clone(), OU1.into()), (period.clone(), OU2.into())]
    );

    // Once: passes, new values and the daily re-sync pushing every total
    // again send nothing more.
    assert_eq!(s.completeness().await.delivered, 0);
    commit(&s.store, "e5", 1, vec![contribution(ANC1, &period, OU2)]).await;
    assert_eq!(s.push_values().await.delivered, 1);
    s.store
        .remark_all_totals(s.clock.now_ms())
        .await
        .expect("resync");
    assert_eq!(s.push_values().await.delivered, 5);
    assert_eq!(s.completeness().await.delivered, 0);
    assert_eq!(s.dhis2.calls().len(), 2);

    assert_eq!(registered_count() - counted_before, 2);
    let text = kiungo::metrics::metrics().encode();
    assert!(
        text.contains(&format!(
            "kiungo_dhis2_completeness_total{{data_set=\"{SET}\",result=\"registered\"}}"
        )),
        "{text}"
    );
}

/// `kiungo_dhis2_completeness_total{data_set=SET,result="registered"}`.
fn registered_count() -> u64 {
    kiungo::metrics::metrics()
        .dhis2_completeness
        .get_or_create(&kiungo::metrics::CompletenessLabels {
            data_set: SET.into(),
            result: "registered".into(),
        })
        .get()
}

async fn late_values_register_at_once_and_withdrawn_values_undo(backend: Backend) {
    let s = setup(backend, 5).await;
    commit(&s.store, "e1", 1, vec![contribution(ANC1, OLD, OU1)]).await;
    commit(
        &s.store,
        "e2",
        1,
        vec![
            contribution(ANC1, OLD, OU2),
            contribution(ANC4_CODE, OLD, OU2),
        ],
    )
    .await;
    s.push_values().await;
    assert_eq!(s.completeness().await.delivered, 2, "long past due");

    // A late event at a third org unit: registered at once.
    commit(&s.store, "e3", 1, vec![contribution(ANC4_CODE, OLD, OU3)]).await;
    s.push_values().await;
    assert_eq!(s.completeness().await.delivered, 1);
    assert_eq!(s.dhis2.calls()[2], call("register", OLD, OU3));

    // OU1's only value withdrawn (an edit without it): undone. OU2 loses
    // one of its two: still complete.
    commit(&s.store, "e1", 2, vec![]).await;
    commit(&s.store, "e2", 2, vec![contribution(ANC1, OLD, OU2)]).await;
    assert_eq!(
        s.push_values().await.delivered,
        3,
        "two deletions and OU2's remaining value"
    );
    assert_eq!(s.completeness().await.delivered, 1);
    assert_eq!(s.dhis2.calls()[3], call("undo", OLD, OU1));
    assert_eq!(
        s.registered().await,
        vec![(OLD.into(), OU2.into()), (OLD.into(), OU3.into())]
    );

    // OU1 reports again: registered again.
    commit(&s.store, "e1", 3, vec![contribution(ANC1, OLD, OU1)]).await;
    s.push_values().await;
    assert_eq!(s.completeness().await.delivered, 1);
    assert_eq!(s.dhis2.calls()[4], call("register", OLD, OU1));
    assert_eq!(s.dhis2.calls().len(), 5);
}

/// One org unit with values of the set under two attribute option combos
/// in one period: two registrations, each with its combo; withdrawing all
/// values of one combo undoes its registration only.
async fn each_attribute_option_combo_is_registered_and_undone_on_its_own(backend: Backend) {
    let s = setup(backend, 5).await;
    commit(
        &s.store,
        "a1",
        1,
        vec![contribution_for(ANC1, OLD, OU1, PROJECT_A)],
    )
    .await;
    commit(
        &s.store,
        "b1",
        1,
        vec![
            contribution_for(ANC1, OLD, OU1, PROJECT_B),
            contribution_for(ANC4_CODE, OLD, OU1, PROJECT_B),
        ],
    )
    .await;
    assert_eq!(s.push_values().await.delivered, 3);
    assert_eq!(
        s.store.completeness_changes_waiting().await.expect("n"),
        3,
        "one note per data element, period, org unit and combo"
    );
    assert_eq!(s.completeness().await.delivered, 2, "long past due");
    let mut calls = s.dhis2.calls();
    calls.sort();
    assert_eq!(
        calls,
        vec![
            call_for("register", OLD, OU1, PROJECT_A),
            call_for("register", OLD, OU1, PROJECT_B),
        ]
    );
    assert_eq!(
        s.registered_by_combo().await,
        vec![(PROJECT_A.into(), true), (PROJECT_B.into(), true)],
        "one row per combo"
    );

    // Project A's only value withdrawn: its registration alone is undone.
    commit(&s.store, "a1", 2, vec![]).await;
    assert_eq!(s.push_values().await.delivered, 1);
    assert_eq!(s.completeness().await.delivered, 1);
    assert_eq!(s.dhis2.calls()[2], call_for("undo", OLD, OU1, PROJECT_A));
    assert_eq!(
        s.registered_by_combo().await,
        vec![(PROJECT_A.into(), false), (PROJECT_B.into(), true)]
    );

    // Project A reports again and project B loses one of its two values:
    // A is registered again, B keeps its registration.
    commit(
        &s.store,
        "a1",
        3,
        vec![contribution_for(ANC1, OLD, OU1, PROJECT_A)],
    )
    .await;
    commit(
        &s.store,
        "b1",
        2,
        vec![contribution_for(ANC1, OLD, OU1, PROJECT_B)],
    )
    .await;
    assert_eq!(
        s.push_values().await.delivered,
        3,
        "A's value, B's deletion and B's remaining value"
    );
    assert_eq!(s.completeness().await.delivered, 1);
    assert_eq!(
        s.dhis2.calls()[3],
        call_for("register", OLD, OU1, PROJECT_A)
    );
    assert_eq!(s.dhis2.calls().len(), 4, "project B keeps a value: no undo");
    assert_eq!(
        s.registered_by_combo().await,
        vec![(PROJECT_A.into(), true), (PROJECT_B.into(), true)]
    );
}

async fn values_still_on_their_way_hold_the_registration_back(backend: Backend) {
    let s = setup(backend, 5).await;
    commit(&s.store, "e1", 1, vec![contribution(ANC1, OLD, OU1)]).await;
    s.push_values().await;
    // Another value of the set at OU1 whose push fails: it is retried,
    // and the registration waits for it.
    commit(&s.store, "e2", 1, vec![contribution(ANC4_CODE, OLD, OU1)]).await;
    s.push
        .script
        .lock()
        .expect("lock")
        .push_back(Err(transient()));
    assert_eq!(s.push_values().await.retried, 1);
    assert_eq!(s.completeness().await.delivered, 0);
    assert!(s.dhis2.calls().is_empty());
    let rows = s.store.completeness_rows(SET).await.expect("rows");
    let waits_until = rows[0].check_at.expect("looked at again");
    assert_eq!(waits_until, s.clock.now_ms() + 30_000, "the recheck time");

    // The value lands; the registration goes once the recheck comes.
    s.clock.advance(Duration::from_secs(10));
    assert_eq!(s.values.run_once().await.expect("pass").delivered, 1);
    assert_eq!(s.completeness().await.delivered, 0);
    s.move_to(waits_until);
    assert_eq!(s.completeness().await.delivered, 1);
    assert_eq!(s.dhis2.calls(), vec![call("register", OLD, OU1)]);
}

async fn failures_retry_behind_the_circuit_and_refusals_are_parked(backend: Backend) {
    let s = setup(backend, 1).await;
    for (id, ou) in [("e1", OU1), ("e2", OU2)] {
        commit(&s.store, id, 1, vec![contribution(ANC1, OLD, ou)]).await;
    }
    s.push_values().await;

    // DHIS2 down: the first request fails, the circuit opens, the second
    // row is not even tried; both wait for their retry.
    s.dhis2.then(Err(transient()));
    let r = s.completeness().await;
    assert_eq!((r.delivered, r.retried), (0, 2));
    assert_eq!(s.dhis2.calls().len(), 1);
    assert!(matches!(s.pass.circuit.state(), CircuitState::Open { .. }));
    let rows = s.store.completeness_rows(SET).await.expect("rows");
    assert!(rows.iter().all(|r| r.attempts == 1 && !r.registered));
    assert!(rows[0].last_error.as_deref() == Some("HTTP 503: down"));
    s.clock.advance(Duration::from_secs(10));
    assert!(s.completeness().await.held, "open circuit: nothing sent");
    assert_eq!(s.dhis2.calls().len(), 1);

    // After the cool-down the value pushes probe (here with nothing to
    // send, which closes the circuit); then both are registered.
    s.clock.advance(Duration::from_secs(30));
    assert!(s.completeness().await.held, "the value pushes probe first");
    assert_eq!(s.values.run_once().await.expect("probe").claimed, 0);
    assert_eq!(s.pass.circuit.state(), CircuitState::Closed);
    assert_eq!(s.completeness().await.delivered, 2);
    assert_eq!(s.pass.circuit.state(), CircuitState::Closed);
    assert_eq!(s.dhis2.calls().len(), 3);

    // A refusal: parked as a DHIS2 dead letter with DHIS2's code and
    // message, not retried.
    commit(&s.store, "e3", 1, vec![contribution(ANC1, OLD, OU3)]).await;
    s.push_values().await;
    s.dhis2.then(Ok(CompletionAnswer::Refused {
        code: "dhis2_conflict".into(),
        message: format!("Data set: `{SET}` is not assigned to organisation unit: `{OU3}`"),
    }));
    assert_eq!(s.completeness().await.parked, 1);
    assert_eq!(s.completeness().await.parked, 0);
    let letters = s
        .store
        .dead_letters(&DeadLetterFilter::default())
        .await
        .expect("letters");
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    assert_eq!(
        (letter.stage.as_str(), letter.reason_code.as_str()),
        ("dhis2", "dhis2_conflict")
    );
    assert!(
        letter.reason.contains("is not assigned"),
        "{}",
        letter.reason
    );
    let shown = s
        .store
        .dead_letter(letter.id)
        .await
        .expect("letter")
        .expect("exists");
    let detail: serde_json::Value =
        serde_json::from_slice(shown.payload.as_deref().expect("detail")).expect("json");
    assert_eq!(
        detail,
        serde_json::json!({"dataSet": SET, "period": OLD, "orgUnit": OU3,
            "attributeOptionCombo": DEFAULT_AOC, "action": "register"})
    );

    // Fixed in DHIS2, the letter replayed: registered.
    let replayed = kiungo::dlq::replay(
        &s.store,
        &support::packs(),
        kiungo::ingest::Limits { max_bytes: 1 << 20 },
        letter.id,
        "ops",
    )
    .await
    .expect("replay");
    assert_eq!(replayed, kiungo::dlq::ReplayResult::Remarked);
    assert_eq!(s.completeness().await.delivered, 1);
    assert_eq!(s.dhis2.calls().last(), Some(&call("register", OLD, OU3)));

    // Failing past the retry policy's maximum age: parked.
    commit(&s.store, "e4", 1, vec![contribution(ANC1, "202402", OU1)]).await;
    s.push_values().await;
    for _ in 0..3 {
        s.dhis2.then(Err(transient()));
    }
    assert_eq!(s.completeness().await.retried, 1);
    s.clock.advance(Duration::from_secs(300));
    s.values.run_once().await.expect("probe");
    assert_eq!(s.completeness().await.retried, 1);
    s.clock.advance(Duration::from_secs(301));
    s.values.run_once().await.expect("probe");
    assert_eq!(s.completeness().await.parked, 1);
    let exhausted = s
        .store
        .dead_letters(&DeadLetterFilter {
            reason_code: Some("dhis2_retries_exhausted".into()),
            ..DeadLetterFilter::default()
        })
        .await
        .expect("letters");
    assert_eq!(exhausted.len(), 1);
    assert!(
        exhausted[0].reason.contains("HTTP 503"),
        "{}",
        exhausted[0].reason
    );
}

/// The store on its own: notes become rows of the data sets their
/// targets name, once; a claim holds a row for its lease; a change while
/// it is held has it looked at again.
async fn store_notes_claims_and_changes(backend: Backend) {
    let db = ScratchDb::new(backend).await.expect("db");
    let store = Store::open(&db.config).await.expect("open");
    let now = kiungo::store::now_ms() + 60_000;
    commit(&store, "e1", 1, vec![contribution(ANC1, OLD, OU1)]).await;
    let totals = store
        .claim_totals(100, now, 0, 0, 60_000)
        .await
        .expect("claim totals");
    let pushed: Vec<_> = totals
        .into_iter()
        .map(|t| (t, TotalResult::Pushed))
        .collect();
    // Without completeness, nothing is noted.
    store.finish_totals(&pushed, now).await.expect("finish");
    assert_eq!(store.completeness_changes_waiting().await.expect("n"), 0);
    store.remark_all_totals(now).await.expect("remark");
    let totals = store
        .claim_totals(100, now, 0, 0, 60_000)
        .await
        .expect("claim totals");
    let pushed: Vec<_> = totals
        .into_iter()
        .map(|t| (t, TotalResult::Pushed))
        .collect();
    store
        .finish_totals_noting(&pushed, now, true)
        .await
        .expect("finish");
    assert_eq!(store.completeness_changes_waiting().await.expect("n"), 1);

    let seen: Arc<Mutex<HashMap<String, (bool, bool)>>> = Arc::default();
    let taken = store
        .drain_completeness_changes(10, now, |c| {
            seen.lock()
                .expect("lock")
                .insert(c.data_element.clone(), (c.filled, c.emptied));
            vec![
                CompletenessTarget {
                    data_set: SET.into(),
                    due_at: now - DAY,
                },
                CompletenessTarget {
                    data_set: "BfMAe6Itzgt".into(),
                    due_at: now + DAY,
                },
            ]
        })
        .await
        .expect("drain");
    assert_eq!(taken, 1);
    assert_eq!(seen.lock().expect("lock").get(ANC1), Some(&(true, false)));
    assert_eq!(
        store
            .drain_completeness_changes(10, now, |_| panic!("taken once"))
            .await
            .expect("drain"),
        0
    );
    let later = store.completeness_rows("BfMAe6Itzgt").await.expect("rows");
    assert_eq!(later[0].check_at, Some(now + DAY), "not due before then");

    // Claimed: due rows only, held for the lease.
    let claimed = store
        .claim_completeness(10, now, 60_000)
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].key.data_set, SET);
    assert!(
        store
            .claim_completeness(10, now + 59_000, 60_000)
            .await
            .expect("claim")
            .is_empty(),
        "held for the lease"
    );
    // A withdrawal noted meanwhile: the registration recorded for the
    // claim stands, and the row is looked at again at once.
    store
        .drain_completeness_changes(10, now, |_| Vec::new())
        .await
        .expect("drain");
    commit(&store, "e1", 2, vec![]).await;
    let totals = store
        .claim_totals(100, now, 0, 0, 60_000)
        .await
        .expect("claim totals");
    assert_eq!(totals[0].value, "");
    let pushed: Vec<_> = totals
        .into_iter()
        .map(|t| (t, TotalResult::Pushed))
        .collect();
    store
        .finish_totals_noting(&pushed, now, true)
        .await
        .expect("finish");
    store
        .drain_completeness_changes(10, now, |c| {
            assert!(c.emptied && !c.filled);
            vec![CompletenessTarget {
                data_set: SET.into(),
                due_at: now - DAY,
            }]
        })
        .await
        .expect("drain");
    store
        .finish_completeness(&[(claimed[0].clone(), CompletenessResult::Registered)], now)
        .await
        .expect("finish");
    let rows = store.completeness_rows(SET).await.expect("rows");
    assert!(rows[0].registered);
    assert_eq!(rows[0].check_at, Some(now), "looked at again");
    let values = store
        .completeness_values(
            &[ANC1.to_owned()],
            &CompletenessKey {
                data_set: SET.into(),
                period: OLD.into(),
                org_unit: OU1.into(),
                attribute_option_combo: DEFAULT_AOC.into(),
            },
        )
        .await
        .expect("values");
    assert!(!values.held && !values.in_flight, "{values:?}");
}

/// A store made before migration 0013: its rows, notes and dead letters
/// were all of the default attribute option combo, and keep it. The
/// migrations up to 0012 are run from the source tree, the rows written
/// as 0012 shaped them, then the store opens (0013 and on).
async fn rows_from_before_0013_keep_the_default_combo(backend: Backend) {
    let db = ScratchDb::new(backend).await.expect("db");
    let pool = support::store_before_migration(&db, backend, "0013").await;
    for sql in [
        format!(
            "INSERT INTO dhis2_completeness (data_set, period, org_unit, due_at, registered, check_at, updated_at) \
             VALUES ('{SET}', '{OLD}', '{OU1}', 0, 0, 0, 0)"
        ),
        format!(
            "INSERT INTO dhis2_completeness_changes (data_element, period, org_unit, filled, emptied) \
             VALUES ('{ANC1}', '{OLD}', '{OU2}', 1, 0)"
        ),
    ] {
        sqlx::query(&sql).execute(&pool).await.expect("insert");
    }
    // A refusal parked before 0013: its detail names no combo.
    let detail =
        serde_json::json!({"dataSet": SET, "period": OLD, "orgUnit": OU1, "action": "register"});
    sqlx::query(
        "INSERT INTO dead_letters (fingerprint, stage, source, reason_code, reason, payload, received_at, last_seen_at) \
         VALUES ($1, 'dhis2', 'dhis2', 'dhis2_conflict', 'refused', $2, 0, 0)",
    )
    .bind(format!("dhis2-completeness:{SET}:{OLD}:{OU1}"))
    .bind(detail.to_string().into_bytes())
    .execute(&pool)
    .await
    .expect("letter");
    pool.close().await;

    let store = Store::open(&db.config).await.expect("open migrates");
    // Its replay has the default combo's row looked at again.
    let letter = store
        .dead_letters(&DeadLetterFilter::default())
        .await
        .expect("letters")
        .pop()
        .expect("the letter");
    assert_eq!(
        kiungo::dlq::replay(
            &store,
            &support::packs(),
            kiungo::ingest::Limits { max_bytes: 1 << 20 },
            letter.id,
            "ops",
        )
        .await
        .expect("replay"),
        kiungo::dlq::ReplayResult::Remarked
    );
    let now = kiungo::store::now_ms() + 1;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let noted = seen.clone();
    store
        .drain_completeness_changes(10, now, move |c| {
            noted
                .lock()
                .expect("lock")
                .push(c.attribute_option_combo.clone());
            Vec::new()
        })
        .await
        .expect("drain");
    assert_eq!(*seen.lock().expect("lock"), vec![DEFAULT_AOC.to_owned()]);
    let claimed = store
        .claim_completeness(10, now, 60_000)
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].key.attribute_option_combo, DEFAULT_AOC);
    // Refused again: counted on the letter parked before 0013 (its
    // fingerprint now names the default combo), not a second one.
    let refused = CompletenessResult::Refused {
        code: "dhis2_conflict".into(),
        message: "refused".into(),
        undo: false,
    };
    store
        .finish_completeness(&[(claimed[0].clone(), refused)], now)
        .await
        .expect("finish");
    let letters = store
        .dead_letters(&DeadLetterFilter {
            stage: Some("dhis2".into()),
            ..DeadLetterFilter::default()
        })
        .await
        .expect("letters");
    assert_eq!(
        letters
            .iter()
            .map(|l| (l.id, l.state.as_str()))
            .collect::<Vec<_>>(),
        vec![(letter.id, "open")],
        "{letters:?}"
    );
    let rows = store.completeness_rows(SET).await.expect("rows");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].key.attribute_option_combo, DEFAULT_AOC);
}

kiungo::on_both_backends!(
    rows_from_before_0013_keep_the_default_combo,
    registrations_wait_for_the_period_end_plus_grace_and_go_once,
    late_values_register_at_once_and_withdrawn_values_undo,
    values_still_on_their_way_hold_the_registration_back,
    each_attribute_option_combo_is_registered_and_undone_on_its_own,
    failures_retry_behind_the_circuit_and_refusals_are_parked,
    store_notes_claims_and_changes,
);
