//! Plan tests: every statement on a hot path (ingest commit, FHIR claim,
//! record and lease sweep, DHIS2 claim, recompute and finish, data set
//! completeness, feedback rounds, retention, the gauges,
//! reconciliation's reads) must cost in
//! proportion to its own work, not to the size of the store. Each test loads a store with a large
//! backlog (tens of thousands of rows per table, generated in one
//! statement each), runs the real operations while recording every
//! statement, and asks the database for each statement's plan: no full
//! scan of a large table, no index walk on a prefix that matches a large
//! part of one (a source, a state). Deterministic: plans, not timings.
//!
//! SQLite is planned as the service runs it, without `ANALYZE`
//! statistics; PostgreSQL after `ANALYZE`, as autovacuum leaves a large
//! table.

use std::time::Duration;

mod support;

use kiungo::store::plan::{Recorded, record};
use kiungo::store::scratch::ScratchDb;
use kiungo::store::{
    Backend, CompletenessKey, CompletenessResult, CompletenessTarget, Delivery, DestinationUpdate,
    Ingest, Rejection, StatusOrigin, Store, TotalResult,
};
use kiungo_mappings::MappingSet;
use serde_json::Value;
use support::{cht_ingest, cht_visit, packs};

/// Events in the backlog.
const BACKLOG: i64 = 40_000;

/// Tables that grow with the events stored or pending.
const LARGE: &[&str] = &[
    "events",
    "event_versions",
    "fhir_outbox",
    "dhis2_contributions",
    "dhis2_dirty",
    "dhis2_pushed",
    "dead_letters",
    "audit_log",
    "fhir_placed",
    "fhir_withdrawals",
    "dhis2_completeness",
    "dhis2_completeness_changes",
];

/// A CHT visit as the committer receives it; the transport fields do
/// not change any plan.
fn ingest(set: &MappingSet, payload: &Value) -> Ingest {
    cht_ingest(set, payload, None)
}

/// The backlog: `BACKLOG` events over four sources (`bk-<i>`), each with
/// a version, a FHIR bundle (60 % pending, 20 % delivered, some in
/// flight, dead, superseded) and a DHIS2 contribution; every total dirty
/// and pushed; dead letters; unpublished status messages; as many data
/// set completeness rows (1 % due, the rest registered with nothing to
/// do) and half as many completeness notes waiting. Payloads are
/// kept for a fifth of the events (half of them still needed by a
/// pending bundle), bundles where delivery needs them and for a few
/// thousand delivered or superseded rows not yet purged.
fn backlog_sql(backend: Backend) -> String {
    let (blob, analyze) = match backend {
        Backend::Sqlite => ("CAST('p' AS BLOB)", ""),
        Backend::Postgres => ("CAST('p' AS BYTEA)", "ANALYZE;"),
    };
    let n = format!(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {BACKLOG})"
    );
    format!(
        "{n} INSERT INTO events (source, event_id, state, superseded_by, mapping, version_hash, versions, \
           payload, received_at, updated_at) \
         SELECT CASE i % 4 WHEN 0 THEN 'cht' WHEN 1 THEN 'kobo' WHEN 2 THEN 'commcare' ELSE 'inhouse' END, \
           'bk-' || i, CASE WHEN i % 50 = 0 THEN 'superseded' ELSE 'live' END, \
           CASE WHEN i % 50 = 0 THEN 'bk-' || (i + 4) END, 'm', 'h' || i, 1, \
           CASE WHEN i % 10 IN (1, 6) THEN {blob} END, i, i FROM n; \
         INSERT INTO event_versions (source, event_id, version_hash, seen_at) \
           SELECT source, event_id, version_hash, received_at FROM events; \
         INSERT INTO fhir_outbox (source, event_id, version_hash, mapping, bundle, entries, state, \
           next_attempt_at, created_at, updated_at, lease_until, notified, server_ids, puts, withdraw_check) \
         SELECT source, event_id, version_hash, 'm', \
           CASE WHEN received_at % 10 < 6 OR received_at % 10 = 8 OR received_at % 100 = 7 THEN '{{}}' END, 2, \
           CASE WHEN received_at % 50 = 0 THEN 'superseded' WHEN received_at % 10 < 6 THEN 'pending' \
             WHEN received_at % 10 < 8 THEN 'delivered' WHEN received_at % 10 = 8 THEN 'delivering' \
             ELSE 'dead' END, \
           received_at, received_at, received_at, \
           CASE WHEN received_at % 10 = 8 THEN 9000000000000 END, \
           CASE WHEN received_at % 3 = 0 THEN 0 ELSE 1 END, '[]', 'Encounter/' || event_id, \
           CASE WHEN received_at % 20 = 1 THEN 1 ELSE 0 END FROM events; \
         INSERT INTO fhir_placed (source, event_id, resource, outbox_id, placed_at) \
           SELECT source, event_id, 'Encounter/' || event_id, 0, received_at FROM events; \
         INSERT INTO fhir_withdrawals (source, event_id, resource, method, by_event_id, outbox_id, \
           withdrawn_at, notified) \
           SELECT source, event_id, 'Observation/' || event_id, 'DELETE', event_id, 0, received_at, \
             CASE WHEN received_at % 10 = 0 THEN 0 ELSE 1 END FROM events WHERE received_at % 5 = 0; \
         INSERT INTO dhis2_contributions (source, event_id, rule, data_element, period, org_unit, coc, aoc, \
           aggregation, value, value_num, event_date, created_at, notified) \
         SELECT source, event_id, 'r', 'de' || (received_at % 7), '2026' || (received_at % 9 + 10), \
           'ou' || (received_at % 400), 'coc', 'aoc', 'count', '1', 1, '2026-01-01', received_at, \
           received_at % 3 FROM events; \
         INSERT INTO dhis2_dirty (data_element, period, org_unit, coc, aoc, marked_at) \
           SELECT DISTINCT data_element, period, org_unit, coc, aoc, 0 FROM dhis2_contributions; \
         INSERT INTO dhis2_pushed (data_element, period, org_unit, coc, aoc, value, pushed_at) \
           SELECT DISTINCT data_element, period, org_unit, coc, aoc, '1', 0 FROM dhis2_contributions; \
         {n} INSERT INTO dead_letters (fingerprint, stage, source, message_id, event_id, reason_code, reason, \
           state, received_at, last_seen_at, notified, payload, resolved_at) \
         SELECT 'ingest:' || i, 'ingest', 'cht', 'msg-' || i, 'bk-' || i, 'not_json', 'body is not JSON', \
           CASE WHEN i % 3 = 0 THEN 'open' WHEN i % 3 = 1 THEN 'replayed' ELSE 'discarded' END, i, i, \
           CASE WHEN i % 4 = 0 THEN 0 ELSE 1 END, {blob}, CASE WHEN i % 3 <> 0 THEN i END \
         FROM n WHERE i % 8 = 0; \
         {n} INSERT INTO dhis2_completeness (data_set, period, org_unit, aoc, due_at, registered, check_at, updated_at) \
         SELECT 'ds' || (i % 3), '2026' || (i % 9 + 10), 'ou' || i, 'aoc' || (i % 2), 0, CASE WHEN i % 100 = 0 THEN 0 ELSE 1 END, \
           CASE WHEN i % 100 = 0 THEN i WHEN i % 100 = 1 THEN 9000000000000 END, 0 FROM n; \
         {n} INSERT INTO dhis2_completeness_changes (data_element, period, org_unit, aoc, filled, emptied) \
         SELECT 'de' || (i % 7), '2026' || (i % 9 + 10), 'ouc' || i, 'aoc' || (i % 3), 1, i % 5 / 4 FROM n WHERE i % 2 = 0; \
         {analyze}"
    )
}

/// Why a plan line is a scan of the store rather than of the work.
fn problem(line: &str) -> Option<&'static str> {
    let l = line.trim();
    // SQLite: `SCAN t` walks a whole table or index.
    if let Some(rest) = l.strip_prefix("SCAN ") {
        let name = rest.split_whitespace().next().unwrap_or("");
        if LARGE.contains(&name) || name.len() <= 3 && !rest.starts_with("CONSTANT") {
            return Some("full scan");
        }
    }
    // SQLite: an index searched on a prefix shared by a large part of
    // the table.
    if l.starts_with("SEARCH ")
        && (l.ends_with("(source=?)") || l.ends_with("(state=?)") || l.ends_with("(notified=?)"))
    {
        return Some("search on a low-cardinality prefix");
    }
    // PostgreSQL.
    if let Some(rest) = l
        .split("Seq Scan on ")
        .nth(1)
        .or_else(|| l.split("Parallel Seq Scan on ").nth(1))
    {
        let table = rest.split_whitespace().next().unwrap_or("");
        if LARGE.contains(&table) {
            return Some("full scan");
        }
    }
    if let Some(cond) = l.strip_prefix("Index Cond: ")
        && !cond.contains(" AND ")
        && (cond.starts_with("(source = ")
            || cond.starts_with("(state = ")
            || cond.starts_with("(notified = "))
    {
        return Some("index condition on a low-cardinality prefix");
    }
    None
}

/// PostgreSQL: an index scan of a large table with no `Index Cond` walks
/// the whole index (for its order), filtering as it goes.
fn unbounded_index_walks(plan: &[String], queues: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for (i, line) in plan.iter().enumerate() {
        let Some(rest) = line
            .split("Index Scan using ")
            .nth(1)
            .or_else(|| line.split("Index Only Scan using ").nth(1))
        else {
            continue;
        };
        let table = rest
            .split(" on ")
            .nth(1)
            .and_then(|t| t.split_whitespace().next())
            .unwrap_or("");
        if !LARGE.contains(&table) || queues.iter().any(|q| line.contains(q)) {
            continue;
        }
        let bounded = plan[i + 1..]
            .iter()
            .take_while(|l| !l.contains("->"))
            .any(|l| l.contains("Index Cond"));
        if !bounded {
            out.push(format!("index walk without a condition: {}", line.trim()));
        }
    }
    out
}

/// Explains every recorded statement and lists each problem with its
/// plan. A plan line naming one of `queues` is accepted: a walk of a
/// partial index that holds only the rows this operation exists to work
/// through (the backlog a gauge counts, the unpublished statuses a round
/// publishes under its `LIMIT`).
async fn check(
    store: &Store,
    what: &str,
    statements: &[Recorded],
    queues: &[&str],
    problems: &mut Vec<String>,
) {
    assert!(!statements.is_empty(), "{what}: no statement recorded");
    for s in statements {
        let plan = store.explain(s).await.expect("explain");
        let mut bad: Vec<String> = plan
            .iter()
            .filter(|l| !queues.iter().any(|q| l.contains(q)))
            .filter_map(|l| problem(l).map(|p| format!("{p}: {}", l.trim())))
            .collect();
        bad.extend(unbounded_index_walks(&plan, queues));
        if !bad.is_empty() {
            problems.push(format!(
                "{what}: {}\n  statement: {}\n  plan:\n    {}",
                bad.join("; "),
                s.sql,
                plan.join("\n    ")
            ));
        }
    }
}

async fn hot_statements_stay_proportional(backend: Backend) {
    let set = packs();
    let db = ScratchDb::new(backend).await.expect("scratch db");
    let store = Store::open(&db.config).await.expect("open");
    store
        .execute_script(&backlog_sql(backend))
        .await
        .expect("backlog");
    let now = kiungo::store::now_ms();
    let mut problems = Vec::new();

    // Ingest: new events, a duplicate, an edit, a replacement of a stored
    // event, a poison message.
    let batch = vec![
        ingest(&set, &cht_visit("new-1", "facility", "")),
        ingest(&set, &cht_visit("new-2", "outreach", "")),
        ingest(&set, &cht_visit("new-1", "facility", "")),
        ingest(&set, &cht_visit("bk-8", "outreach", "")),
        ingest(&set, &cht_visit("new-3", "facility", "bk-12")),
        Ingest {
            result: Err(Rejection {
                code: "not_json".into(),
                reason: "body is not JSON".into(),
                mapping: None,
                event_id: None,
                detail: None,
            }),
            ..ingest(&set, &cht_visit("x", "facility", ""))
        },
    ];
    let (out, st) = record(store.commit(&batch)).await;
    out.expect("commit");
    check(&store, "ingest commit", &st, &[], &mut problems).await;

    // FHIR: claim (with the lease sweep), record each kind of result.
    let (claimed, st) = record(store.claim_fhir(16, now, 60_000)).await;
    let claimed = claimed.expect("claim");
    assert_eq!(claimed.len(), 16, "the backlog has due bundles");
    check(&store, "FHIR claim", &st, &[], &mut problems).await;
    let results: Vec<(_, Delivery)> = claimed
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let r = match i {
                0 => Delivery::Retry {
                    next_attempt_at: now + 1_000,
                    error: "503".into(),
                },
                1 => Delivery::Dead {
                    reason_code: "fhir_rejected".into(),
                    error: "400".into(),
                },
                _ => Delivery::Delivered {
                    server_ids: vec!["Patient/1".into()],
                },
            };
            (item.clone(), r)
        })
        .collect();
    let (out, st) = record(store.record_fhir_many(&results, now)).await;
    out.expect("record");
    check(&store, "FHIR record", &st, &[], &mut problems).await;
    let (out, st) = record(store.requeue_fhir(claimed[1].id, now)).await;
    out.expect("requeue");
    check(&store, "FHIR requeue", &st, &[], &mut problems).await;

    // DHIS2: claim and recompute, finish each kind of result.
    let (totals, st) = record(store.claim_totals(50, now, 0, 0, 60_000)).await;
    let totals = totals.expect("claim totals");
    assert_eq!(totals.len(), 50, "the backlog has dirty totals");
    check(&store, "DHIS2 claim", &st, &[], &mut problems).await;
    let results: Vec<_> = totals
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let r = match i {
                0 => TotalResult::Rejected {
                    code: "E7619".into(),
                    message: "not a number".into(),
                },
                1 => TotalResult::Retry {
                    next_attempt_at: now + 1_000,
                    error: "503".into(),
                },
                _ => TotalResult::Pushed,
            };
            (t.clone(), r)
        })
        .collect();
    let (out, st) = record(store.finish_totals_noting(&results, now, true)).await;
    out.expect("finish totals");
    check(&store, "DHIS2 finish", &st, &[], &mut problems).await;

    // Completeness: notes drained into rows, due rows claimed, a row's
    // values read, each kind of result recorded, a replay's recheck.
    let (out, st) = record(store.drain_completeness_changes(100, now, |c| {
        vec![CompletenessTarget {
            data_set: format!("ds{}", c.data_element.len() % 3),
            due_at: now - 1,
        }]
    }))
    .await;
    assert_eq!(out.expect("drain"), 100);
    // The notes are a queue: every row is work, and the walk that takes
    // them stops at the batch; they are deleted by their physical ids.
    // The rows they lead to go through the keys.
    assert!(st.len() >= 2, "take, rows");
    assert!(st[0].sql.starts_with("DELETE"), "{}", st[0].sql);
    let take = store.explain(&st[0]).await.expect("explain").join("\n");
    let by_id = match backend {
        Backend::Sqlite => "USING INTEGER PRIMARY KEY (rowid=?)",
        Backend::Postgres => "Tid Scan on dhis2_completeness_changes",
    };
    assert!(take.contains(by_id), "{take}");
    check(
        &store,
        "completeness drain: take",
        &st[..1],
        &[
            "SCAN dhis2_completeness_changes",
            "Seq Scan on dhis2_completeness_changes",
        ],
        &mut problems,
    )
    .await;
    check(
        &store,
        "completeness drain: rows",
        &st[1..],
        &[],
        &mut problems,
    )
    .await;
    let (claimed, st) = record(store.claim_completeness(50, now, 60_000)).await;
    let claimed = claimed.expect("claim completeness");
    assert_eq!(claimed.len(), 50, "the backlog has due rows");
    check(&store, "completeness claim", &st, &[], &mut problems).await;
    let des = ["de3".to_owned(), "code:DE_3".to_owned()];
    let row = CompletenessKey {
        data_set: "ds0".into(),
        period: "202612".into(),
        org_unit: "ou3".into(),
        attribute_option_combo: "aoc".into(),
    };
    let (out, st) = record(store.completeness_values(&des, &row)).await;
    out.expect("values");
    check(&store, "completeness values", &st, &[], &mut problems).await;
    let results: Vec<_> = claimed
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let r = match i % 6 {
                0 => CompletenessResult::Registered,
                1 => CompletenessResult::Undone,
                2 => CompletenessResult::Settled,
                3 => CompletenessResult::Postponed { until: now + 1_000 },
                4 => CompletenessResult::Retry {
                    next_attempt_at: now + 1_000,
                    error: "503".into(),
                },
                _ => CompletenessResult::Refused {
                    code: "dhis2_conflict".into(),
                    message: "not assigned".into(),
                    undo: false,
                },
            };
            (c.clone(), r)
        })
        .collect();
    let (out, st) = record(store.finish_completeness(&results, now)).await;
    out.expect("finish completeness");
    check(&store, "completeness finish", &st, &[], &mut problems).await;
    let (out, st) = record(store.recheck_completeness(&claimed[0].key, now)).await;
    assert!(out.expect("recheck"));
    check(&store, "completeness recheck", &st, &[], &mut problems).await;

    // Status messages back to apps: a round and its marks.
    let (round, st) = record(store.pending_statuses(100)).await;
    let round = round.expect("statuses");
    assert!(!round.is_empty(), "the backlog has unpublished statuses");
    check(
        &store,
        "feedback round",
        &st,
        &[
            "fhir_outbox_notify",
            "dead_letters_notify",
            "fhir_withdrawals_notify",
            "dhis2_contributions_unnotified",
        ],
        &mut problems,
    )
    .await;
    let origins: Vec<StatusOrigin> = round.iter().map(|m| m.origin.clone()).collect();
    let (out, st) = record(store.mark_statuses(&origins)).await;
    out.expect("mark");
    check(&store, "feedback marks", &st, &[], &mut problems).await;
    let (out, st) = record(store.try_lease("feedback", "me", now, 10_000)).await;
    out.expect("lease");
    check(&store, "feedback lease", &st, &[], &mut problems).await;

    // Operations: gauges, destination health, one event's status.
    let (out, st) = record(store.backlog()).await;
    out.expect("backlog");
    // The gauges count the backlog itself: bundles in flight, dirty
    // totals, open dead letters (read at most every `http.admin_cache`).
    check(
        &store,
        "backlog gauges",
        &st,
        &[
            "fhir_outbox_ready",
            "fhir_outbox_leased",
            "dhis2_dirty",
            "dead_letters_open",
            // PostgreSQL reads the table itself when the backlog is most
            // of it, as here.
            "Seq Scan on fhir_outbox",
            "Seq Scan on dead_letters",
        ],
        &mut problems,
    )
    .await;
    let update = DestinationUpdate {
        circuit: "closed",
        success_at: Some(now),
        error: None,
        now,
    };
    let (out, st) = record(store.record_destination("fhir", &update)).await;
    out.expect("destination");
    check(&store, "destination health", &st, &[], &mut problems).await;
    let (out, st) = record(store.event_status("bk-16", None)).await;
    out.expect("event status");
    check(&store, "event status", &st, &[], &mut problems).await;

    // Reconciliation: one data set's totals and pushed values for one
    // period, by data element (a UID and a `code:` that matches nothing).
    let des = ["de3".to_owned(), "code:DE_3".to_owned()];
    let (out, st) = record(store.dhis2_totals_for(&des, "202612", None)).await;
    let kiungo = out.expect("reconcile read");
    assert!(!kiungo.totals.is_empty() && !kiungo.pushed.is_empty());
    check(&store, "DHIS2 reconcile read", &st, &[], &mut problems).await;

    // Retention, last: it purges the backlog's old rows.
    let (out, st) = record(store.purge_delivered(Duration::from_secs(3600), now)).await;
    let purged = out.expect("purge");
    check(&store, "retention", &st, &[], &mut problems).await;
    // In several batches, past the payloads kept for bundles that still
    // wait, and nothing purgeable left behind.
    assert!(
        purged.payloads > 1_000 && purged.bundles > 1_000 && purged.dead_letters > 1_000,
        "{purged:?}"
    );
    let again = store
        .purge_delivered(Duration::from_secs(3600), now)
        .await
        .expect("purge again");
    assert_eq!(
        (again.payloads, again.bundles, again.dead_letters),
        (0, 0, 0)
    );

    assert!(
        problems.is_empty(),
        "{} statement(s) cost in proportion to the store, not to their work:\n\n{}",
        problems.len(),
        problems.join("\n\n")
    );
}

#[tokio::test]
async fn sqlite_hot_statements_stay_proportional() {
    hot_statements_stay_proportional(Backend::Sqlite).await;
}

#[tokio::test]
async fn postgres_hot_statements_stay_proportional() {
    hot_statements_stay_proportional(Backend::Postgres).await;
}
