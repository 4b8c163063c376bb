//! Test harness against the real services: a RabbitMQ vhost per test, a
//! confirmed publisher, the `kiungo` binary as a child process that can be
//! SIGKILLed, and the check that a store holds exactly what a workload
//! should leave there.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::future::join_all;
use kiungo::store::{DeadLetterFilter, Store};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use sha2::{Digest, Sha256};

use crate::workload::{Expected, Kind, Message, Workload};

/// Runs `rabbitmqctl -q ARGS`.
pub fn rabbitmqctl(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("rabbitmqctl")
        .arg("-q")
        .args(args)
        .output()
        .context("running rabbitmqctl")?;
    if !out.status.success() {
        bail!(
            "rabbitmqctl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A RabbitMQ vhost of one test's own, deleted when dropped, so that tests
/// run in parallel and can close their connections without disturbing
/// the others.
#[derive(Debug)]
pub struct Vhost {
    /// The vhost's name.
    pub name: String,
}

impl Vhost {
    /// Creates the vhost and gives `guest` full rights on it.
    pub fn new() -> anyhow::Result<Self> {
        let name = format!(
            "kiungo-test-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        rabbitmqctl(&["add_vhost", &name])?;
        rabbitmqctl(&["set_permissions", "-p", &name, "guest", ".*", ".*", ".*"])?;
        Ok(Self { name })
    }

    /// AMQP URL of the vhost.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:5672/{}", self.name)
    }

    /// Closes every client connection to the vhost from the broker side,
    /// as a broker restart or a network cut would.
    pub fn close_connections(&self) -> anyhow::Result<()> {
        rabbitmqctl(&[
            "close_all_connections",
            "--vhost",
            &self.name,
            "kiungo test: simulated broker loss",
        ])?;
        Ok(())
    }

    /// Messages ready and unacknowledged in a queue.
    pub fn queue_depth(&self, queue: &str) -> anyhow::Result<(u64, u64)> {
        let out = rabbitmqctl(&[
            "list_queues",
            "-p",
            &self.name,
            "name",
            "messages_ready",
            "messages_unacknowledged",
        ])?;
        for line in out.lines() {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.first() == Some(&queue) && cols.len() == 3 {
                return Ok((cols[1].parse()?, cols[2].parse()?));
            }
        }
        bail!("queue {queue} not found in vhost {}", self.name)
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        let _ = rabbitmqctl(&["delete_vhost", &self.name]);
    }
}

/// The queue a workload message goes to: `<prefix>.<source>`.
pub fn queue_for(prefix: &str, source: &str) -> String {
    format!("{prefix}.{source}")
}

/// Publishes messages in order to their source's queue (declared durable),
/// persistent, with `message_id` and `timestamp`, and waits for the
/// broker's confirms.
pub async fn publish(url: &str, prefix: &str, messages: &[Message]) -> anyhow::Result<()> {
    let publisher = Publisher::connect(url, prefix).await?;
    publisher.send(messages).await?;
    publisher.close().await
}

/// How many times a nacked publish is tried.
const NACK_ROUNDS: u64 = 10;

/// A confirmed publisher on one connection.
#[derive(Debug)]
pub struct Publisher {
    conn: Connection,
    channel: lapin::Channel,
    prefix: String,
    declared: std::sync::Mutex<BTreeSet<String>>,
}

impl Publisher {
    /// Connects and enables publisher confirms.
    pub async fn connect(url: &str, prefix: &str) -> anyhow::Result<Self> {
        let conn = Connection::connect(url, ConnectionProperties::default()).await?;
        let channel = conn.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self {
            conn,
            channel,
            prefix: prefix.to_owned(),
            declared: std::sync::Mutex::new(BTreeSet::new()),
        })
    }

    /// Publishes in order and waits for every confirm.
    pub async fn send(&self, messages: &[Message]) -> anyhow::Result<()> {
        let sources: BTreeSet<String> = messages.iter().map(|m| m.source.clone()).collect();
        for s in sources {
            let new = self
                .declared
                .lock()
                .map(|mut d| d.insert(s.clone()))
                .unwrap_or(true);
            if new {
                self.channel
                    .queue_declare(
                        queue_for(&self.prefix, &s).into(),
                        QueueDeclareOptions {
                            durable: true,
                            ..QueueDeclareOptions::default()
                        },
                        // As Kiungo declares a queue by default (quorum,
                        // delivery limit, parking queue): the broker
                        // refuses a declaration with other arguments.
                        kiungo_connectors::rabbitmq::queue_arguments(&serde_json::from_value(
                            serde_json::json!({"name": queue_for(&self.prefix, &s), "source": s}),
                        )?),
                    )
                    .await?;
            }
        }
        for chunk in messages.chunks(500) {
            // A nack means the broker did not take the message (a quorum
            // queue whose leader is not known yet, on a busy machine):
            // publish it again, as any publisher must, a few times.
            let mut todo: Vec<&Message> = chunk.iter().collect();
            for round in 0..NACK_ROUNDS {
                let mut confirms = Vec::with_capacity(todo.len());
                for m in &todo {
                    confirms.push(self.publish_one(m).await?);
                }
                let mut nacked = Vec::new();
                for (m, c) in todo.iter().zip(join_all(confirms).await) {
                    if !c?.is_ack() {
                        nacked.push(*m);
                    }
                }
                if nacked.is_empty() {
                    break;
                }
                if round + 1 == NACK_ROUNDS {
                    bail!(
                        "broker did not confirm {} publish(es) after {NACK_ROUNDS} tries",
                        nacked.len()
                    );
                }
                tokio::time::sleep(Duration::from_millis(200 * (round + 1))).await;
                todo = nacked;
            }
        }
        Ok(())
    }

    async fn publish_one(&self, m: &Message) -> anyhow::Result<lapin::PublisherConfirm> {
        let props = BasicProperties::default()
            .with_message_id(m.message_id.as_str().into())
            .with_timestamp(m.timestamp)
            .with_delivery_mode(2)
            .with_content_type("application/json".into());
        Ok(self
            .channel
            .basic_publish(
                "".into(),
                queue_for(&self.prefix, &m.source).into(),
                BasicPublishOptions::default(),
                &m.body,
                props,
            )
            .await?)
    }

    /// Closes the connection.
    pub async fn close(self) -> anyhow::Result<()> {
        self.conn.close(200, "done".into()).await?;
        Ok(())
    }
}

/// Path of the `kiungo` binary next to the running test (built by
/// `cargo nextest run --workspace`); builds it if missing.
pub fn kiungo_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("test binary has no target dir")?;
    let bin = dir.join("kiungo");
    if !bin.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", "kiungo", "--bin", "kiungo"])
            .status()?;
        if !status.success() {
            bail!("cargo build -p kiungo failed");
        }
    }
    Ok(bin)
}

/// A `kiungo run` child process.
#[derive(Debug)]
pub struct KiungoProcess {
    child: Child,
    config: PathBuf,
    log: PathBuf,
}

impl KiungoProcess {
    /// Starts `kiungo run --config CONFIG`, appending its output to `LOG`.
    pub fn start(config: &Path, log: &Path) -> anyhow::Result<Self> {
        Self::start_with_env(config, log, &[("RUST_LOG", "info")])
    }

    /// [`Self::start`] with environment variables (`RUST_LOG`,
    /// `KIUNGO_LOG_FORMAT`, ...).
    pub fn start_with_env(config: &Path, log: &Path, env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let mut command = Command::new(kiungo_binary()?);
        command.args(["run", "--config"]).arg(config);
        for (k, v) in env {
            command.env(k, v);
        }
        let child = command
            .stdout(Stdio::from(out.try_clone()?))
            .stderr(Stdio::from(out))
            .spawn()?;
        Ok(Self {
            child,
            config: config.into(),
            log: log.into(),
        })
    }

    /// SIGKILL, no chance to flush or ack anything; then start it again.
    pub fn kill_and_restart(&mut self) -> anyhow::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        *self = Self::start(&self.config.clone(), &self.log.clone())?;
        Ok(())
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(mut self) -> anyhow::Result<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        Ok(self.child.wait()?)
    }
}

impl Drop for KiungoProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Compares the store with what the workload should leave: the live events
/// and their current versions, the withdrawn ones, every DHIS2 total, and
/// one dead letter per distinct poison message with its reason. Returns a
/// description of the differences.
pub async fn store_matches(
    store: &Store,
    workload: &Workload,
    expected: &Expected,
) -> Result<(), String> {
    let mut problems = Vec::new();
    let rows = store.events().await.map_err(|e| e.to_string())?;
    let mut last_body: BTreeMap<(String, String), &[u8]> = BTreeMap::new();
    for m in &workload.messages {
        if let Some(key) = &m.key {
            last_body.insert((m.source.clone(), key.clone()), &m.body);
        }
    }
    let live: BTreeMap<(String, String), Option<String>> = rows
        .iter()
        .filter(|r| r.state == "live")
        .map(|r| {
            (
                (r.source.clone(), r.event_id.clone()),
                r.version_hash.clone(),
            )
        })
        .collect();
    let superseded: BTreeSet<(String, String)> = rows
        .iter()
        .filter(|r| r.state == "superseded")
        .map(|r| (r.source.clone(), r.event_id.clone()))
        .collect();
    let want: BTreeSet<&(String, String)> = expected.events.keys().collect();
    let have: BTreeSet<&(String, String)> = live.keys().collect();
    let missing = want.difference(&have).count();
    let extra = have.difference(&want).count();
    if missing + extra > 0 {
        problems.push(format!(
            "live events: {} expected, {} stored, {missing} missing, {extra} unexpected",
            want.len(),
            have.len()
        ));
    }
    let wrong_version = expected
        .events
        .keys()
        .filter(|k| {
            let want = last_body.get(*k).map(|b| sha256_hex(b));
            live.get(*k).is_some_and(|h| *h != want)
        })
        .count();
    if wrong_version > 0 {
        problems.push(format!(
            "{wrong_version} live events hold another version than the last published"
        ));
    }
    let not_withdrawn = expected.withdrawn.difference(&superseded).count();
    if not_withdrawn > 0 {
        problems.push(format!("{not_withdrawn} replaced events are not withdrawn"));
    }

    let totals = store.dhis2_totals().await.map_err(|e| e.to_string())?;
    let want_totals: BTreeMap<(String, String, String, String, String), f64> = expected
        .totals
        .iter()
        .map(|(k, v)| {
            (
                (
                    k.data_element.clone(),
                    k.period.clone(),
                    k.org_unit.clone(),
                    k.category_option_combo.clone(),
                    k.attribute_option_combo.clone(),
                ),
                *v,
            )
        })
        .collect();
    let mut wrong = 0;
    for key in want_totals
        .keys()
        .chain(totals.keys())
        .collect::<BTreeSet<_>>()
    {
        let (a, b) = (
            want_totals.get(key).copied().unwrap_or(0.0),
            totals.get(key).copied().unwrap_or(0.0),
        );
        if (a - b).abs() > 1e-9 {
            wrong += 1;
            if wrong <= 3 {
                problems.push(format!("total {key:?}: expected {a}, stored {b}"));
            }
        }
    }
    if wrong > 3 {
        problems.push(format!("… {wrong} totals differ in all"));
    }

    let mut want_dead: BTreeMap<&'static str, BTreeSet<(&str, &[u8])>> = BTreeMap::new();
    for m in &workload.messages {
        if let Kind::Poison(class) = m.kind {
            want_dead
                .entry(class.reason())
                .or_default()
                .insert((m.source.as_str(), m.body.as_slice()));
        }
    }
    let dead = store
        .dead_letters(&DeadLetterFilter {
            stage: Some("ingest".into()),
            limit: Some(1_000_000),
            ..DeadLetterFilter::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let mut have_dead: BTreeMap<String, usize> = BTreeMap::new();
    for d in &dead {
        *have_dead.entry(d.reason_code.clone()).or_default() += 1;
    }
    let want_dead: BTreeMap<String, usize> = want_dead
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.len()))
        .collect();
    if want_dead != have_dead {
        problems.push(format!(
            "dead letters by reason: expected {want_dead:?}, stored {have_dead:?}"
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

/// How long a started `kiungo` may take to answer `/readyz`: generous,
/// because a machine busy with other builds and tests takes minutes
/// where an idle one takes a second (a bound on a hung start, not a
/// speed requirement).
pub const READY_DEADLINE: Duration = Duration::from_secs(300);

/// The longest any end-to-end wait may take, however steady its
/// progress: a bound on a hung test, not a speed requirement.
pub const WAIT_CAP: Duration = Duration::from_secs(45 * 60);

/// Polls [`store_matches`] until it holds. A slow machine is not a
/// failure: it fails only once the differences stopped changing for
/// `stall` (nothing was ingested in that time), or after [`WAIT_CAP`];
/// the error carries the last differences.
pub async fn wait_for_store(
    store: &Store,
    workload: &Workload,
    expected: &Expected,
    stall: Duration,
) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut last = String::new();
    let mut since = Instant::now();
    loop {
        match store_matches(store, workload, expected).await {
            Ok(()) => return Ok(()),
            Err(diff) => {
                if diff != last {
                    last = diff.clone();
                    since = Instant::now();
                }
                if since.elapsed() > stall || start.elapsed() > WAIT_CAP {
                    bail!(
                        "after {:?} ({:?} without progress) the store still differs:\n{diff}",
                        start.elapsed(),
                        since.elapsed()
                    )
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// What each end-to-end test has of its own: a vhost, a database, a
/// directory and a queue-name prefix.
#[derive(Debug)]
pub struct Isolated {
    /// The vhost.
    pub vhost: Vhost,
    /// The database.
    pub db: kiungo::store::scratch::ScratchDb,
    /// A scratch directory.
    pub dir: tempfile::TempDir,
    /// Prefix of the test's queue names.
    pub prefix: String,
}

impl Isolated {
    /// Creates them, on `backend`.
    pub async fn new(backend: kiungo::store::Backend) -> anyhow::Result<Self> {
        Ok(Self {
            vhost: Vhost::new()?,
            db: kiungo::store::scratch::ScratchDb::new(backend).await?,
            dir: tempfile::tempdir()?,
            prefix: format!(
                "kiungo.e2e.{}",
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            ),
        })
    }
}

/// Waits until `GET /readyz` on `127.0.0.1:port` answers 200.
pub async fn wait_ready(port: u16, timeout: Duration) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    let start = Instant::now();
    loop {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.write_all(b"GET /readyz HTTP/1.0\r\n\r\n");
            let mut buf = String::new();
            let _ = s.read_to_string(&mut buf);
            if buf.starts_with("HTTP/1.0 200") || buf.starts_with("HTTP/1.1 200") {
                return Ok(());
            }
        }
        if start.elapsed() > timeout {
            bail!("kiungo not ready after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The scratch database's URL through the local Unix socket when there is
/// one: sqlx 0.9.0 does not set `TCP_NODELAY`, which costs ~40 ms per
/// multi-statement round trip over TCP (see BENCHMARKS.md).
pub fn local_socket_url(url: &str) -> String {
    const SOCKET_DIR: &str = "/var/run/postgresql";
    let Some(rest) = url.strip_prefix("postgres://") else {
        return url.to_owned();
    };
    let (user_host, db) = rest.split_once('/').unwrap_or((rest, ""));
    let (user, host) = user_host.rsplit_once('@').unwrap_or(("", user_host));
    let local = host.starts_with("127.0.0.1") || host.starts_with("localhost");
    if !local || db.contains('?') || !Path::new(SOCKET_DIR).join(".s.PGSQL.5432").exists() {
        return url.to_owned();
    }
    let user = if user.is_empty() {
        String::new()
    } else {
        format!("{user}@")
    };
    format!("postgres://{user}localhost/{db}?host={SOCKET_DIR}")
}

/// Waits until no FHIR bundle is pending or delivering and no DHIS2 total
/// is dirty; describes what is left once nothing moved for `timeout` (or
/// after [`WAIT_CAP`]).
pub async fn until_delivered(store: &Store, timeout: Duration) -> Result<(), String> {
    let start = Instant::now();
    let mut last = None;
    let mut since = Instant::now();
    loop {
        let states: std::collections::HashMap<String, i64> = store
            .outbox_states()
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .collect();
        let stats = store.stats().await.map_err(|e| e.to_string())?;
        let busy = states.get("pending").copied().unwrap_or(0)
            + states.get("delivering").copied().unwrap_or(0);
        if busy == 0 && stats.dhis2_dirty == 0 {
            return Ok(());
        }
        // Progress (fewer bundles waiting, fewer dirty totals) restarts
        // the clock: a slow machine delivers late, not never.
        let now = (busy, stats.dhis2_dirty);
        if last != Some(now) {
            last = Some(now);
            since = Instant::now();
        }
        if since.elapsed() > timeout || start.elapsed() > WAIT_CAP {
            return Err(format!(
                "not delivered after {:?} ({:?} without progress): outbox {states:?}, dirty totals {}",
                start.elapsed(),
                since.elapsed(),
                stats.dhis2_dirty
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `%XX` escapes decoded (an `ifNoneExist` search value as the mappings
/// now write it, URL-encoded); anything else, `+` included, kept as is.
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push(((hex(h).unwrap_or(0) << 4) | hex(l).unwrap_or(0)) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The sandbox's DHIS2 metadata as it was before it learnt the kobo pack's
/// malaria data elements (`MAL_*` codes and their data set): the
/// end-to-end workloads keep sending totals by codes the instance lacks,
/// so that the `unknown_reference` path (preflight, parking once, never
/// retried) stays exercised at scale.
pub fn metadata_without_malaria_codes() -> anyhow::Result<serde_json::Value> {
    let mut metadata: serde_json::Value = serde_json::from_str(kiungo::sandbox::DEFAULT_METADATA)?;
    let malaria: BTreeSet<String> = metadata["dataElements"]
        .as_array()
        .context("dataElements")?
        .iter()
        .filter(|de| de["code"].as_str().is_some_and(|c| c.starts_with("MAL_")))
        .filter_map(|de| de["id"].as_str().map(str::to_owned))
        .collect();
    anyhow::ensure!(
        !malaria.is_empty(),
        "the sandbox metadata has no MAL_ codes any more"
    );
    if let Some(des) = metadata["dataElements"].as_array_mut() {
        des.retain(|de| !de["id"].as_str().is_some_and(|id| malaria.contains(id)));
    }
    if let Some(sets) = metadata["dataSets"].as_array_mut() {
        sets.retain(|ds| {
            !ds["dataSetElements"].as_array().is_some_and(|els| {
                els.iter().any(|e| {
                    e["dataElement"]["id"]
                        .as_str()
                        .is_some_and(|id| malaria.contains(id))
                })
            })
        });
    }
    Ok(metadata)
}

/// User + system CPU seconds of process `pid` (`self` for this one), from
/// `/proc/PID/stat`; `None` off Linux or when the process is gone.
pub fn process_cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name, which may hold spaces.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14, stime 15.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// CPU seconds `pid` (as `process_cpu_seconds` names it) spent since it
/// had spent `before`; `None` when either reading is missing.
pub fn process_cpu_since(pid: &str, before: Option<f64>) -> Option<f64> {
    process_cpu_seconds(pid).zip(before).map(|(b, a)| b - a)
}

/// The command line of process `pid`, its arguments joined by spaces;
/// `None` when the process is gone.
pub fn process_cmdline(pid: &str) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(String::from_utf8_lossy(&raw).replace('\0', " "))
}

/// CPU seconds of every process whose command line `pick` accepts,
/// summed (processes that ended are no longer counted).
pub fn processes_cpu_seconds(pick: impl Fn(&str) -> bool) -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    dir.flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|pid| pid.bytes().all(|b| b.is_ascii_digit()))
        .filter(|pid| process_cmdline(pid).is_some_and(|c| pick(&c)))
        .filter_map(|pid| process_cpu_seconds(&pid))
        .sum()
}

/// Busy and total CPU seconds of the whole machine since boot, from the
/// first line of `/proc/stat` (idle and iowait count as not busy).
pub fn machine_cpu_seconds() -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let v: Vec<f64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: f64 = v.iter().sum();
    let idle = v.get(3).copied().unwrap_or(0.0) + v.get(4).copied().unwrap_or(0.0);
    Some(((total - idle) / 100.0, total / 100.0))
}

/// A bench's `--store` value: `sqlite` or `postgres`.
pub fn parse_store(value: &str) -> anyhow::Result<kiungo::store::Backend> {
    match value {
        "sqlite" => Ok(kiungo::store::Backend::Sqlite),
        "postgres" => Ok(kiungo::store::Backend::Postgres),
        other => anyhow::bail!("--store {other}: expected sqlite or postgres"),
    }
}

/// A bench's `--sizes` value: numbers separated by commas.
pub fn parse_sizes(value: &str) -> anyhow::Result<Vec<usize>> {
    value
        .split(',')
        .map(|s| {
            s.trim()
                .parse()
                .map_err(|e| anyhow::anyhow!("--sizes {value}: {s:?} is not a number ({e})"))
        })
        .collect()
}
