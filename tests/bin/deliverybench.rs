//! `kiungo-deliverybench`: publish → delivered latency and delivery
//! throughput of the release `kiungo` binary against the local FHIR and
//! DHIS2 simulators (`kiungo::sandbox`, in this process, no faults).
//!
//! ```text
//! cargo build --release -p kiungo -p kiungo-tests
//! target/release/kiungo-deliverybench --events 10000 --rate 500    # latency at 500 events/s
//! target/release/kiungo-deliverybench --events 20000 --rate 0      # as fast as it goes
//! ```
//!
//! Latency is per event: from the moment the publisher handed the message
//! to RabbitMQ (confirmed) to the moment the store recorded its FHIR
//! bundle as delivered (the simulator's 2xx). DHIS2 totals go out after
//! the push delay (1 s here), so their latency is that delay plus a push.
//!
//! `--compress off` sends request bodies plain (on: gzipped from 1 KiB,
//! the default); `--pool-idle-timeout 0s` never reuses a connection. The
//! last lines report bytes on the wire and inflated, and the TCP
//! connections each simulator saw.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use kiungo::sandbox::{Sandbox, SandboxConfig};
use kiungo::store::scratch::ScratchDb;
use kiungo::store::{Backend, Store};
use kiungo_tests::harness::{Publisher, Vhost, queue_for, wait_ready};
use kiungo_tests::workload::{Mix, generate_with, load_mappings, packs_dir};

const SOURCES: [&str; 4] = ["cht", "commcare", "kobo", "inhouse"];

fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    kiungo::tls::install_crypto_provider();
    let (mut events, mut rate, mut backend) = (10_000usize, 500usize, Backend::Sqlite);
    let mut max_push_delay = "1m".to_owned();
    let (mut compress, mut pool_idle_timeout) = (true, "15s".to_owned());
    let (mut fhir_latency_ms, mut per_transaction, mut concurrency) = (0u64, 1usize, 64usize);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--events" => events = value()?.parse()?,
            "--rate" => rate = value()?.parse()?,
            "--max-push-delay" => max_push_delay = value()?,
            "--fhir-latency-ms" => fhir_latency_ms = value()?.parse()?,
            "--events-per-transaction" => per_transaction = value()?.parse()?,
            "--concurrency" => concurrency = value()?.parse()?,
            "--compress" => {
                compress = match value()?.as_str() {
                    "on" => true,
                    "off" => false,
                    other => bail!("--compress {other}: expected on or off"),
                }
            }
            "--pool-idle-timeout" => pool_idle_timeout = value()?,
            "--store" => backend = kiungo_tests::harness::parse_store(&value()?)?,
            other => bail!(
                "unknown flag {other}; flags: --events N --rate R (0: unpaced) --store sqlite|postgres \
                 --max-push-delay D (DHIS2; 1s pushes each total once a second while it changes) \
                 --compress on|off --pool-idle-timeout D (0s: no connection reuse) \
                 --fhir-latency-ms MS --concurrency N (FHIR requests in flight) --events-per-transaction N"
            ),
        }
    }
    let mappings = load_mappings(&packs_dir())?;
    let workload = generate_with(
        &mappings,
        events,
        7,
        Mix {
            duplicates: 0.0,
            edits: 0.0,
            poison: 0.0,
        },
    )?;

    let mut sandbox_config = SandboxConfig::for_test();
    sandbox_config.workers = 2;
    sandbox_config.fhir.faults.latency = Duration::from_millis(fhir_latency_ms);
    let sandbox = Sandbox::start(sandbox_config).await?;
    let vhost = Vhost::new()?;
    let prefix = "deliverybench";
    let db = ScratchDb::new(backend).await?;
    let dir = tempfile::tempdir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    std::fs::write(
        dir.path().join("key"),
        "kiungo-deliverybench-pseudonym-key-0123456789",
    )?;
    std::fs::write(dir.path().join("pw"), "district")?;
    let mut queues = String::new();
    for s in SOURCES {
        queues.push_str(&format!(
            "    - {{name: {}, source: {s}}}\n",
            queue_for(prefix, s)
        ));
    }
    let yaml = format!(
        "mappings: {mappings}\npseudonym_key_file: key\nstore:\n  url: {store}\n\
         rabbitmq:\n  url: {amqp}\n  queues:\n{queues}http:\n  listen: 127.0.0.1:{port}\n\
         destinations:\n  fhir:\n    server: {{base_url: '{fhir}', compress_requests: {compress}, pool_idle_timeout: {pool_idle_timeout}}}\n    concurrency: {concurrency}\n    events_per_transaction: {per_transaction}\n\
         \x20 dhis2:\n    server:\n      base_url: '{dhis2}'\n      auth: {{type: basic, username: admin, password: {{file: {pw}}}}}\n      \
         compress_requests: {compress}\n      pool_idle_timeout: {pool_idle_timeout}\n    push_delay: 1s\n    max_push_delay: {max_push_delay}\n",
        mappings = packs_dir().display(),
        store = db.config.url,
        amqp = vhost.url(),
        fhir = sandbox.fhir_url(),
        dhis2 = sandbox.dhis2_url(),
        pw = dir.path().join("pw").display(),
    );
    let config = dir.path().join("kiungo.yaml");
    std::fs::write(&config, yaml)?;
    let bin = std::env::current_exe()?.with_file_name("kiungo");
    let mut child = std::process::Command::new(&bin)
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    wait_ready(port, Duration::from_secs(30)).await?;

    // Publish, paced in 10 ms steps, remembering when each went out.
    let mut published: HashMap<String, i64> = HashMap::new();
    let publisher = Publisher::connect(&vhost.url(), prefix).await?;
    let start = Instant::now();
    let step = if rate == 0 {
        workload.messages.len()
    } else {
        (rate / 100).max(1)
    };
    for (i, chunk) in workload.messages.chunks(step).enumerate() {
        if rate > 0 {
            let due = start + Duration::from_millis(10 * i as u64);
            tokio::time::sleep_until(due.into()).await;
        }
        publisher.send(chunk).await?;
        let now = kiungo::store::now_ms();
        for m in chunk {
            if let Some(k) = &m.key {
                published.insert(k.clone(), now);
            }
        }
    }
    let publish_secs = start.elapsed().as_secs_f64();

    let store = Store::open(&db.config).await?;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let states: HashMap<String, i64> = store.outbox_states().await?.into_iter().collect();
        let busy = states.get("pending").copied().unwrap_or(0)
            + states.get("delivering").copied().unwrap_or(0);
        let delivered = states.get("delivered").copied().unwrap_or(0);
        if busy == 0
            && delivered as usize >= published.len()
            && store.stats().await?.dhis2_dirty == 0
        {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("not delivered in 600 s: {states:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let times = store.delivery_times().await?;
    let mut latencies: Vec<i64> = times
        .iter()
        .filter_map(|(_, id, _, delivered)| published.get(id).map(|p| delivered - p))
        .collect();
    latencies.sort_unstable();
    let first = published.values().min().copied().unwrap_or(0);
    let last = times.iter().map(|t| t.3).max().unwrap_or(0);
    let pushed = store.dhis2_pushed().await?.len();
    let resources = sandbox.fhir_resources()["total"].as_u64().unwrap_or(0);
    println!(
        "{} events published in {publish_secs:.1} s ({:.0}/s); {} bundles delivered ({resources} resources) in {:.1} s from the first publish = {:.0} bundles/s; {pushed} DHIS2 totals pushed",
        published.len(),
        published.len() as f64 / publish_secs,
        latencies.len(),
        (last - first) as f64 / 1000.0,
        latencies.len() as f64 * 1000.0 / (last - first).max(1) as f64,
    );
    println!(
        "publish → FHIR delivered: p50 {} ms, p90 {} ms, p99 {} ms, max {} ms",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.9),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(0)
    );
    let fhir_requests = sandbox.fhir_overlaps()["requests"].as_u64().unwrap_or(0);
    println!(
        "FHIR ({per_transaction} events per transaction, concurrency {concurrency}, latency {fhir_latency_ms} ms): {fhir_requests} requests = {:.0} requests/s, {:.2} bundles per request",
        fhir_requests as f64 * 1000.0 / (last - first).max(1) as f64,
        latencies.len() as f64 / fhir_requests.max(1) as f64,
    );
    let t = sandbox.dhis2_traffic();
    let num = |k: &str| t[k].as_f64().unwrap_or(0.0);
    println!(
        "DHIS2 (push_delay 1s, max_push_delay {max_push_delay}): {} requests, {} values for {} keys = {:.1} sends per key (max {}), {} bytes = {:.0} bytes per accepted value",
        t["requests"],
        t["values"],
        t["keys"],
        num("sends_per_key_mean"),
        t["sends_per_key_max"],
        t["bytes"],
        num("bytes") / num("accepted").max(1.0),
    );
    println!(
        "DHIS2 wire: {} of {} requests gzipped, {} bytes on the wire for {} bytes of JSON ({:.0}%), {} TCP connections",
        t["gzipped"],
        t["requests"],
        t["bytes"],
        t["body_bytes"],
        100.0 * num("bytes") / num("body_bytes").max(1.0),
        t["connections"],
    );
    let f = sandbox.fhir_traffic();
    let fnum = |k: &str| f[k].as_f64().unwrap_or(0.0);
    println!(
        "FHIR wire: {} of {} transactions gzipped, {} bytes on the wire for {} bytes of JSON ({:.0}%; {:.0} vs {:.0} bytes per bundle), {} TCP connections",
        f["gzipped"],
        f["transactions"],
        f["wire_bytes"],
        f["body_bytes"],
        100.0 * fnum("wire_bytes") / fnum("body_bytes").max(1.0),
        fnum("wire_bytes") / fnum("transactions").max(1.0),
        fnum("body_bytes") / fnum("transactions").max(1.0),
        f["connections"],
    );
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    sandbox.stop().await;
    Ok(())
}
