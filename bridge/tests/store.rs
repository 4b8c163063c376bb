//! The store's commit rules, on both backends: new, duplicate, edit,
//! stale re-delivery, `replaces` in and out of order, dead letters,
//! retention and the append-only audit log.

mod support;

use kiungo::store::scratch::ScratchDb;
use kiungo::store::{Backend, DeadLetterFilter, Ingest, Outcome, Rejection, Store};
use serde_json::json;
use support::{cht_ingest as ingest, cht_visit, packs};

fn poison(bytes: &[u8]) -> Ingest {
    Ingest {
        source: "cht".into(),
        queue: Some("q".into()),
        message_id: Some("p1".into()),
        version_ts: None,
        received_at: kiungo::store::now_ms(),
        payload: bytes.to_vec(),
        headers: None,
        result: Err(Rejection {
            code: "not_json".into(),
            reason: "body is not JSON: expected value at line 1 column 1".into(),
            mapping: None,
            event_id: None,
            detail: None,
        }),
    }
}

async fn open(backend: Backend) -> (ScratchDb, Store) {
    let db = ScratchDb::new(backend).await.expect("scratch db");
    let store = Store::open(&db.config).await.expect("open");
    (db, store)
}

async fn sum(store: &Store) -> f64 {
    store.dhis2_totals().await.expect("totals").values().sum()
}

async fn versions_and_edits(backend: Backend) {
    let set = packs();
    let (_db, store) = open(backend).await;
    let a1 = ingest(&set, &cht_visit("a", "facility", ""), Some(1));
    let a2 = ingest(&set, &cht_visit("a", "outreach", ""), Some(2));
    let b = ingest(&set, &cht_visit("b", "facility", ""), Some(1));

    let out = store
        .commit(&[a1.clone(), b.clone(), a1.clone()])
        .await
        .expect("commit");
    assert_eq!(
        out,
        vec![Outcome::Stored, Outcome::Stored, Outcome::Duplicate]
    );
    let stats = store.stats().await.expect("stats");
    assert_eq!((stats.events_live, stats.outbox_pending), (2, 2));
    let before = store.dhis2_totals().await.expect("totals");
    assert!(sum(&store).await > 0.0);

    // An edit replaces a's contributions and supersedes its bundle.
    assert_eq!(
        store
            .commit(std::slice::from_ref(&a2))
            .await
            .expect("commit"),
        vec![Outcome::Replaced]
    );
    let after = store.dhis2_totals().await.expect("totals");
    assert_ne!(
        before, after,
        "the edit moved a's visit from facility to outreach"
    );
    assert_eq!(
        sum(&store).await,
        before.values().sum::<f64>(),
        "same number of visits"
    );
    let stats = store.stats().await.expect("stats");
    assert_eq!((stats.outbox_pending, stats.outbox_superseded), (2, 1));

    // The old version re-delivered late is stale, by hash and by timestamp.
    assert_eq!(
        store
            .commit(std::slice::from_ref(&a1))
            .await
            .expect("commit"),
        vec![Outcome::Stale]
    );
    let mut a0 = cht_visit("a", "facility", "");
    a0["_rev"] = json!("0-older");
    let mut a0 = ingest(&set, &a0, Some(0));
    a0.version_ts = Some(0);
    assert_eq!(
        store.commit(&[a0]).await.expect("commit"),
        vec![Outcome::Stale]
    );
    assert_eq!(store.dhis2_totals().await.expect("totals"), after);

    // Edit and re-edit inside one batch: only the last counts.
    let b2 = ingest(&set, &cht_visit("b", "outreach", ""), Some(2));
    let mut b3 = cht_visit("b", "facility", "");
    b3["_rev"] = json!("3-newer");
    let b3 = ingest(&set, &b3, Some(3));
    assert_eq!(
        store.commit(&[b2, b3]).await.expect("commit"),
        vec![Outcome::Replaced, Outcome::Replaced]
    );
    let stats = store.stats().await.expect("stats");
    assert_eq!(stats.events_live, 2);
    assert_eq!(sum(&store).await, before.values().sum::<f64>());
    let rows = store.events().await.expect("events");
    assert_eq!(
        rows.iter().map(|r| r.versions).collect::<Vec<_>>(),
        vec![2, 3]
    );
}

async fn replaces_in_and_out_of_order(backend: Backend) {
    let set = packs();
    let (_db, store) = open(backend).await;
    let x1 = ingest(&set, &cht_visit("x1", "facility", ""), None);
    let x2 = ingest(&set, &cht_visit("x2", "outreach", "uuid:x1"), None);
    store
        .commit(std::slice::from_ref(&x1))
        .await
        .expect("commit");
    let one = sum(&store).await;
    assert_eq!(
        store.commit(&[x2]).await.expect("commit"),
        vec![Outcome::Stored]
    );
    assert_eq!(sum(&store).await, one, "x2 replaced x1: still one visit");
    // x1 again: superseded, nothing changes.
    assert_eq!(
        store.commit(&[x1]).await.expect("commit"),
        vec![Outcome::Superseded]
    );
    assert_eq!(sum(&store).await, one);

    // The replacement first, then the original it replaces.
    let y2 = ingest(&set, &cht_visit("y2", "facility", "uuid:y1"), None);
    let y1 = ingest(&set, &cht_visit("y1", "facility", ""), None);
    assert_eq!(
        store.commit(&[y2, y1]).await.expect("commit"),
        vec![Outcome::Stored, Outcome::Superseded]
    );
    assert_eq!(sum(&store).await, 2.0 * one);
    let stats = store.stats().await.expect("stats");
    assert_eq!((stats.events_live, stats.events_superseded), (2, 2));

    // A chain z1 <- z2 <- z3 whose middle link commits last (replicas
    // committing in any order): z2 is superseded by z3 but must still
    // withdraw z1, else z1 would count alongside z3.
    let z1 = ingest(&set, &cht_visit("z1", "facility", ""), None);
    let z2 = ingest(&set, &cht_visit("z2", "facility", "uuid:z1"), None);
    let z3 = ingest(&set, &cht_visit("z3", "facility", "uuid:z2"), None);
    assert_eq!(
        store.commit(&[z1]).await.expect("commit"),
        vec![Outcome::Stored]
    );
    assert_eq!(
        store.commit(&[z3]).await.expect("commit"),
        vec![Outcome::Stored]
    );
    assert_eq!(
        sum(&store).await,
        4.0 * one,
        "z1 and z3 both live until z2 arrives"
    );
    assert_eq!(
        store.commit(&[z2]).await.expect("commit"),
        vec![Outcome::Superseded]
    );
    assert_eq!(sum(&store).await, 3.0 * one, "z2 withdrew z1 on arrival");
    let stats = store.stats().await.expect("stats");
    assert_eq!((stats.events_live, stats.events_superseded), (3, 4));

    // w2 replaces w1; an edit of w2 (which no longer names w1) commits
    // first and the replacement itself arrives late, as a stale version:
    // it still withdraws w1.
    let w1 = ingest(&set, &cht_visit("w1", "facility", ""), Some(1_000));
    let w2_edit = ingest(&set, &cht_visit("w2", "outreach", ""), Some(3_000));
    let w2 = ingest(&set, &cht_visit("w2", "facility", "uuid:w1"), Some(2_000));
    assert_eq!(
        store.commit(&[w1, w2_edit]).await.expect("commit"),
        vec![Outcome::Stored, Outcome::Stored]
    );
    assert_eq!(sum(&store).await, 5.0 * one);
    assert_eq!(
        store
            .commit(std::slice::from_ref(&w2))
            .await
            .expect("commit"),
        vec![Outcome::Stale]
    );
    assert_eq!(sum(&store).await, 4.0 * one, "the stale w2 withdrew w1");
    assert_eq!(
        store.commit(&[w2]).await.expect("commit"),
        vec![Outcome::Stale]
    );
    assert_eq!(sum(&store).await, 4.0 * one, "and only once");
}

async fn poison_is_parked_once(backend: Backend) {
    let set = packs();
    let (_db, store) = open(backend).await;
    let ok = ingest(&set, &cht_visit("c", "facility", ""), None);
    let bad = poison(b"{not json");
    let out = store.commit(&[bad.clone(), ok, bad]).await.expect("commit");
    let Outcome::Parked {
        dead_letter_id,
        reason,
    } = &out[0]
    else {
        panic!("{out:?}")
    };
    assert_eq!(reason, "not_json");
    assert_eq!(out[1], Outcome::Stored);
    assert_eq!(
        &out[2], &out[0],
        "the same message parked twice is one dead letter"
    );
    let list = store
        .dead_letters(&DeadLetterFilter::default())
        .await
        .expect("list");
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].seen_count, 2);
    assert!(list[0].payload.is_none(), "lists carry no payloads");
    let one = store
        .dead_letter(*dead_letter_id)
        .await
        .expect("get")
        .expect("found");
    assert_eq!(one.payload.as_deref(), Some(&b"{not json"[..]));
    assert_eq!(
        one.reason,
        "body is not JSON: expected value at line 1 column 1"
    );
    let filtered = store
        .dead_letters(&DeadLetterFilter {
            reason_code: Some("no_mapping".into()),
            ..Default::default()
        })
        .await
        .expect("list");
    assert!(filtered.is_empty());
}

async fn retention_purges_payloads_not_pending_bundles(backend: Backend) {
    let set = packs();
    let (_db, store) = open(backend).await;
    store
        .commit(&[ingest(&set, &cht_visit("d", "facility", ""), None)])
        .await
        .expect("commit");
    let later = kiungo::store::now_ms() + 10_000;
    let report = store
        .purge_delivered(std::time::Duration::from_secs(1), later)
        .await
        .expect("purge");
    assert_eq!(
        (report.payloads, report.bundles),
        (0, 0),
        "the bundle is still pending"
    );
    // An edit supersedes the first bundle; once delivered work is old
    // enough, superseded bundles go.
    store
        .commit(&[ingest(&set, &cht_visit("d", "outreach", ""), None)])
        .await
        .expect("commit");
    let report = store
        .purge_delivered(std::time::Duration::from_secs(1), later)
        .await
        .expect("purge");
    assert_eq!(report.bundles, 1);
    assert_eq!(report.payloads, 0, "the new version's bundle is pending");
    assert!(store.events().await.expect("events")[0].has_payload);
}

async fn audit_log_is_append_only(backend: Backend) {
    let (_db, store) = open(backend).await;
    store
        .audit("tester", "dlq.discard", "dead_letter:1", None)
        .await
        .expect("audit");
    let err = store
        .audit_tamper_for_tests()
        .await
        .expect_err("update must fail");
    assert!(err.to_string().contains("append-only"), "{err}");
}

/// One replica at a time holds a lease; it renews it; another takes it
/// over only once it ran out.
async fn leases_have_one_holder(backend: Backend) {
    let (_db, store) = open(backend).await;
    assert!(
        store
            .try_lease("feedback", "a", 1_000, 100)
            .await
            .expect("a")
    );
    assert!(
        !store
            .try_lease("feedback", "b", 1_050, 100)
            .await
            .expect("b")
    );
    assert!(
        store
            .try_lease("feedback", "a", 1_090, 100)
            .await
            .expect("renew")
    );
    assert!(
        !store
            .try_lease("feedback", "b", 1_150, 100)
            .await
            .expect("b")
    );
    assert!(
        store
            .try_lease("feedback", "b", 1_200, 100)
            .await
            .expect("taken over")
    );
    assert!(
        !store
            .try_lease("feedback", "a", 1_210, 100)
            .await
            .expect("a lost it")
    );
    assert!(
        store
            .try_lease("other", "a", 1_210, 100)
            .await
            .expect("another lease")
    );
}

/// A publisher clock set to 2100 does not lock the event: its timestamp is
/// clamped to the receive time plus a tolerance, and the next genuine
/// edit replaces it instead of being "stale".
async fn a_future_timestamp_does_not_lock_the_event(backend: Backend) {
    use kiungo::ingest::{Limits, Origin, prepare};
    let set = packs();
    let (_db, store) = open(backend).await;
    let through = |payload: serde_json::Value, ts: i64| {
        let origin = Origin {
            source: "cht".into(),
            queue: Some("q".into()),
            message_id: None,
            timestamp_ms: Some(ts),
            headers: None,
            route: Ok(None),
        };
        prepare(
            &set,
            origin,
            serde_json::to_vec(&payload).expect("bytes"),
            Limits { max_bytes: 1 << 20 },
        )
    };
    let year_2100 = 4_102_444_800_000;
    let first = through(cht_visit("clock", "facility", ""), year_2100);
    assert!(
        first.version_ts.is_some_and(|t| t < year_2100),
        "clamped: {:?}",
        first.version_ts
    );
    assert_eq!(
        first
            .headers
            .as_ref()
            .and_then(|h| h["x-kiungo-timestamp-clamped"].as_i64()),
        Some(year_2100),
        "the original is recorded"
    );
    assert_eq!(
        store.commit(&[first]).await.expect("commit"),
        vec![Outcome::Stored]
    );
    // A genuine edit published ten minutes on (stamped as such, so that
    // the test need not wait): before the fix, 2100 made it stale.
    let edit = through(
        cht_visit("clock", "outreach", ""),
        kiungo::store::now_ms() + 10 * 60 * 1000,
    );
    assert_eq!(
        store.commit(&[edit]).await.expect("commit"),
        vec![Outcome::Replaced]
    );
}

/// `GET /v1/events/{id}` without a source finds the id under every
/// source that sent it (looked up under each source through the primary
/// key, migration 0014), in source order, and only there.
async fn one_event_id_under_several_sources(backend: Backend) {
    let set = packs();
    let (_db, store) = open(backend).await;
    let from = |source: &str, id: &str| Ingest {
        source: source.into(),
        ..ingest(&set, &cht_visit(id, "facility", ""), None)
    };
    let batch = [
        from("odk", "shared"),
        from("cht", "shared"),
        from("kobo", "other"),
        from("zz-last", "shared"),
        from("aa-first", "other"),
    ];
    assert!(
        store
            .commit(&batch)
            .await
            .expect("commit")
            .iter()
            .all(|o| *o == Outcome::Stored)
    );
    let sources = |list: Vec<kiungo::store::EventStatus>| {
        list.into_iter().map(|s| s.source).collect::<Vec<_>>()
    };
    assert_eq!(
        sources(store.event_status("shared", None).await.expect("status")),
        ["cht", "odk", "zz-last"]
    );
    assert_eq!(
        sources(store.event_status("other", None).await.expect("status")),
        ["aa-first", "kobo"]
    );
    assert_eq!(
        sources(
            store
                .event_status("shared", Some("odk"))
                .await
                .expect("status")
        ),
        ["odk"]
    );
    assert!(
        store
            .event_status("nowhere", None)
            .await
            .expect("status")
            .is_empty()
    );
}

/// The backlog gauge counts bundles never tried, retrying and being sent
/// (each state through its own partial index, migration 0014), and the
/// oldest of them.
async fn backlog_counts_each_state(backend: Backend) {
    use kiungo::store::Delivery;
    let set = packs();
    let (_db, store) = open(backend).await;
    let batch: Vec<Ingest> = ["b1", "b2", "b3", "b4"]
        .iter()
        .map(|id| ingest(&set, &cht_visit(id, "facility", ""), None))
        .collect();
    store.commit(&batch).await.expect("commit");
    let now = kiungo::store::now_ms();
    let claimed = store.claim_fhir(2, now, 60_000).await.expect("claim");
    assert_eq!(claimed.len(), 2);
    // One fails and waits for a retry in an hour; the other stays in flight.
    store
        .record_fhir(
            &claimed[0],
            &Delivery::Retry {
                next_attempt_at: now + 3_600_000,
                error: "503".into(),
            },
            now,
        )
        .await
        .expect("record");
    let fhir = |b: &kiungo::store::Backlog| (b.fhir_pending, b.fhir_retrying, b.fhir_delivering);
    let b = store.backlog().await.expect("backlog");
    assert_eq!(fhir(&b), (2, 1, 1), "{b:?}");
    let oldest = b.fhir_oldest_at.expect("oldest");
    assert!(oldest <= now, "{oldest} after {now}");
    // Delivered bundles leave the backlog.
    store
        .record_fhir(
            &claimed[1],
            &Delivery::Delivered { server_ids: vec![] },
            now,
        )
        .await
        .expect("record");
    let b = store.backlog().await.expect("backlog");
    assert_eq!(fhir(&b), (2, 1, 0), "{b:?}");
}

kiungo::on_both_backends!(
    backlog_counts_each_state,
    one_event_id_under_several_sources,
    a_future_timestamp_does_not_lock_the_event,
    leases_have_one_holder,
    versions_and_edits,
    replaces_in_and_out_of_order,
    poison_is_parked_once,
    retention_purges_payloads_not_pending_bundles,
    audit_log_is_append_only,
);
