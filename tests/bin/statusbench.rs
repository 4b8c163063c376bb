//! `kiungo-statusbench`: what one round of status messages costs while a
//! DHIS2 outage holds contributions back, as that backlog grows.
//!
//! ```text
//! cargo build --release -p kiungo-tests --bin kiungo-statusbench
//! target/release/kiungo-statusbench --store sqlite --sizes 1000,1000000
//! target/release/kiungo-statusbench --store postgres --sizes 1000,1000000
//! ```
//!
//! For each size, on a fresh database: that many DHIS2 contributions wait
//! for their totals (every total dirty, its pushes failing: the outage),
//! spread over the few thousand totals a district's facilities make, and
//! `--limit` contributions of a total DHIS2 accepted wait to be told
//! "delivered". PostgreSQL is then `ANALYZE`d, as autovacuum would have.
//!
//! - **kiungo**: `Store::pending_statuses(--limit)`, the round the status
//!   publisher runs (without marking, so that every round finds the same
//!   rows); it must return the `--limit` accepted contributions.
//! - **before 0015** (the baseline, same run, same rows): the waiting
//!   contributions put back at `notified = 0` as the schema before
//!   migration 0015 held them, and the statement the round ran then for
//!   DHIS2 contributions, which found the accepted ones by joining every
//!   unpublished contribution with its total.
//!
//! Each is run `--rounds` times; the median wall time per round is
//! reported (the machine is shared: read the ratio between sizes).
//! `--explain` also prints the plan of each statement the round runs.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use kiungo::store::scratch::ScratchDb;
use kiungo::store::{Backend, Store};

struct Args {
    sizes: Vec<usize>,
    backend: Backend,
    rounds: usize,
    limit: i64,
    explain: bool,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        sizes: vec![1_000, 1_000_000],
        backend: Backend::Sqlite,
        rounds: 20,
        limit: 500,
        explain: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--sizes" => a.sizes = kiungo_tests::harness::parse_sizes(&value()?)?,
            "--rounds" => a.rounds = value()?.parse().context("--rounds")?,
            "--limit" => a.limit = value()?.parse().context("--limit")?,
            "--explain" => a.explain = true,
            "--store" => a.backend = kiungo_tests::harness::parse_store(&value()?)?,
            other => bail!(
                "unknown flag {other}; flags: --sizes N,N --rounds N --limit N --store sqlite|postgres --explain"
            ),
        }
    }
    if a.rounds == 0 || a.limit < 1 {
        bail!("--rounds and --limit must be at least 1");
    }
    Ok(a)
}

/// `size` waiting contributions over dirty totals, `limit` accepted ones
/// of a clean total pushed after them.
fn backlog_sql(backend: Backend, size: usize, limit: i64) -> String {
    let analyze = match backend {
        Backend::Sqlite => "",
        Backend::Postgres => "ANALYZE;",
    };
    let n = |to: String| {
        format!("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {to})")
    };
    format!(
        "{waiting} INSERT INTO dhis2_contributions (source, event_id, rule, data_element, period, org_unit, \
           coc, aoc, aggregation, value, value_num, event_date, created_at, notified) \
         SELECT 'cht', 'w' || i, 'r', 'de' || (i % 7), '2026' || (i % 9 + 10), 'ou' || (i % 400), 'coc', 'aoc', \
           'count', '1', 1, '2026-01-01', i, 2 FROM n; \
         INSERT INTO dhis2_dirty (data_element, period, org_unit, coc, aoc, marked_at) \
           SELECT DISTINCT data_element, period, org_unit, coc, aoc, 0 FROM dhis2_contributions; \
         INSERT INTO dhis2_pushed (data_element, period, org_unit, coc, aoc, value, pushed_at) \
           SELECT DISTINCT data_element, period, org_unit, coc, aoc, '1', 0 FROM dhis2_contributions; \
         {ready} INSERT INTO dhis2_contributions (source, event_id, rule, data_element, period, org_unit, \
           coc, aoc, aggregation, value, value_num, event_date, created_at, notified) \
         SELECT 'cht', 'a' || i, 'r', 'de_ok', '202610', 'ou_ok', 'coc', 'aoc', 'count', '1', 1, \
           '2026-01-01', {size} + i, 0 FROM n; \
         INSERT INTO dhis2_pushed (data_element, period, org_unit, coc, aoc, value, pushed_at) \
           VALUES ('de_ok', '202610', 'ou_ok', 'coc', 'aoc', '{limit}', {after}); \
         {analyze}",
        waiting = n(size.to_string()),
        ready = n(limit.to_string()),
        after = size as i64 + limit + 1,
    )
}

/// The round's statement for DHIS2 contributions before migration 0015.
fn before_0015(limit: i64) -> String {
    format!(
        "SELECT c.source, c.event_id, c.rule, p.pushed_at, c.created_at FROM dhis2_contributions c \
         JOIN dhis2_pushed p ON p.data_element = c.data_element AND p.period = c.period \
           AND p.org_unit = c.org_unit AND p.coc = c.coc AND p.aoc = c.aoc \
         WHERE c.notified = 0 AND p.pushed_at >= c.created_at \
         AND NOT EXISTS (SELECT 1 FROM dhis2_dirty d \
           WHERE d.data_element = c.data_element AND d.period = c.period \
           AND d.org_unit = c.org_unit AND d.coc = c.coc AND d.aoc = c.aoc) \
         AND NOT EXISTS (SELECT 1 FROM dead_letters dl WHERE dl.state = 'open' \
           AND dl.fingerprint = 'dhis2:' || c.data_element || ':' || c.period || ':' || c.org_unit \
           || ':' || c.coc || ':' || c.aoc) \
         ORDER BY c.created_at, c.source, c.event_id LIMIT {limit}"
    )
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort_unstable();
    times[times.len() / 2]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = args()?;
    println!(
        "| store | waiting contributions | kiungo ms/round | before 0015 ms/round |\n|---|---|---|---|"
    );
    for &size in &args.sizes {
        let db = ScratchDb::new(args.backend).await?;
        let store = Store::open(&db.config).await?;
        store
            .execute_script(&backlog_sql(args.backend, size, args.limit))
            .await?;
        if args.explain {
            let (out, statements) =
                kiungo::store::plan::record(store.pending_statuses(args.limit)).await;
            out?;
            for st in &statements {
                println!("{}", st.sql);
                for line in store.explain(st).await? {
                    println!("    {line}");
                }
            }
        }
        let mut kiungo = Vec::with_capacity(args.rounds);
        for _ in 0..args.rounds {
            let t = Instant::now();
            let round = store.pending_statuses(args.limit).await?;
            kiungo.push(t.elapsed());
            let told = round.iter().filter(|m| m.destination == "dhis2").count();
            if told as i64 != args.limit {
                bail!(
                    "the round told {told} contributions, not the {} accepted",
                    args.limit
                );
            }
        }
        let analyze = match args.backend {
            Backend::Sqlite => "",
            Backend::Postgres => " ANALYZE dhis2_contributions;",
        };
        store
            .execute_script(&format!(
                "UPDATE dhis2_contributions SET notified = 0 WHERE notified = 2;{analyze}"
            ))
            .await?;
        let old = before_0015(args.limit);
        let mut before = Vec::with_capacity(args.rounds);
        for _ in 0..args.rounds {
            let t = Instant::now();
            store.execute_script(&old).await?;
            before.push(t.elapsed());
        }
        println!(
            "| {} | {size} | {:.2} | {:.2} |",
            match args.backend {
                Backend::Sqlite => "sqlite",
                Backend::Postgres => "postgres",
            },
            median(kiungo).as_secs_f64() * 1e3,
            median(before).as_secs_f64() * 1e3,
        );
    }
    Ok(())
}
