//! How fast the completeness pass takes its notes (where DHIS2's values
//! changed) and turns them into rows: 100,000 notes over three attribute
//! option combos, taken 500 at a time, each leading to a row of one of
//! three data sets. A measurement, not a check: ignored by default; run
//! with `cargo test -p kiungo --test completeness_notes_rate -- --ignored
//! --nocapture` (`BENCHMARKS.md`).

use kiungo::store::scratch::ScratchDb;
use kiungo::store::{Backend, CompletenessTarget, Store};

/// Notes written, then drained.
const NOTES: usize = 100_000;

async fn notes_per_second(backend: Backend) {
    let db = ScratchDb::new(backend).await.expect("db");
    let store = Store::open(&db.config).await.expect("open");
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&db.config.url).await.expect("pool");
    sqlx::query(&format!(
        "WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM k WHERE i < {NOTES}) \
         INSERT INTO dhis2_completeness_changes (data_element, period, org_unit, aoc, filled, emptied) \
         SELECT 'de' || (i % 7), '2026' || (i % 9 + 10), 'ou' || i, 'aoc' || (i % 3), 1, 0 FROM k"
    ))
    .execute(&pool)
    .await
    .expect("notes");
    pool.close().await;
    let now = kiungo::store::now_ms();
    let start = std::time::Instant::now();
    let mut taken = 0;
    loop {
        let n = store
            .drain_completeness_changes(500, now, |c| {
                vec![CompletenessTarget {
                    data_set: format!("ds{}", c.org_unit.len() % 3),
                    due_at: now + 1,
                }]
            })
            .await
            .expect("drain");
        if n == 0 {
            break;
        }
        taken += n;
    }
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(taken, NOTES);
    println!(
        "{backend:?}: {taken} notes in {secs:.2} s, {:.0} notes/s",
        taken as f64 / secs
    );
}

mod sqlite {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "a measurement; run with --ignored --nocapture"]
    async fn notes_per_second() {
        super::notes_per_second(kiungo::store::Backend::Sqlite).await;
    }
}

mod postgres {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "a measurement; run with --ignored --nocapture"]
    async fn notes_per_second() {
        super::notes_per_second(kiungo::store::Backend::Postgres).await;
    }
}
