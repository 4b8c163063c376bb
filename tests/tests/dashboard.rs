//! The dashboard in a real browser: Kiungo runs in-process (SQLite, HTTP
//! ingest only) with an operator token and a viewer token; a non-JSON
//! event is parked; `tests/browser/dashboard.mjs` drives Debian's Chromium
//! through the dashboard (phone and desktop widths, sign-in, every
//! section, the viewer without buttons, Replay as the operator); then the
//! store must show the replay, audited with the operator token's name, and
//! the screenshots must exist.
//!
//! Needs Node.js (with npm) and `/usr/bin/chromium` (`apt-get install -y
//! nodejs npm chromium`); without them the test fails and says so. The
//! screenshots go to `target/test-artifacts/dashboard.png` and
//! `dashboard-desktop.png`.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use kiungo::app::Application;
use kiungo::config::Config;
use kiungo_tests::workload::packs_dir;
use serde_json::Value;
use sha2::{Digest, Sha256};

const OPERATOR_TOKEN: &str = "kiungo-dashboard-test-operator-6f1c0d9a2b7e4c58a3d1";
const VIEWER_TOKEN: &str = "kiungo-dashboard-test-viewer-0a9e8d7c6b5a4f3e2d1c";
const KEY: &str = "kiungo-dashboard-test-pseudonym-key-0123456789";

fn sha256_hex(s: &str) -> String {
    let digest: [u8; 32] = Sha256::digest(s.as_bytes()).into();
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("browser")
}

fn artifacts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts")
}

/// The Chromium to drive: `KIUNGO_CHROMIUM` or Debian's.
fn chromium() -> PathBuf {
    std::env::var_os("KIUNGO_CHROMIUM")
        .map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from)
}

/// Fails (does not skip) when the browser or Node.js is missing.
fn require_tools() {
    let chromium = chromium();
    assert!(
        chromium.is_file(),
        "{} not found: the dashboard test drives Debian's Chromium; install it with \
         `apt-get update && apt-get install -y chromium` (or point KIUNGO_CHROMIUM at a Chromium binary)",
        chromium.display()
    );
    for (tool, arg) in [("node", "--version"), ("npm", "--version")] {
        let ok = std::process::Command::new(tool)
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "`{tool}` not found: the dashboard test runs tests/browser/dashboard.mjs with Node.js; \
             install it with `apt-get update && apt-get install -y nodejs npm`"
        );
    }
}

/// One HTTP/1.1 request on a fresh connection; returns status and body.
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<u8>) {
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to kiungo");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).expect("send request");
    stream.write_all(body).expect("send body");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read response");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("response has headers");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let mut body = raw[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    (status, body)
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = data.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&data[..eol]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = eol + 2;
        out.extend_from_slice(&data[start..(start + size).min(data.len())]);
        data = &data[(start + size + 2).min(data.len())..];
    }
    out
}

async fn npm_ci_if_needed() {
    let dir = browser_dir();
    if dir
        .join("node_modules/playwright-core/package.json")
        .is_file()
    {
        return;
    }
    let out = tokio::process::Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(&dir)
        .output()
        .await
        .expect("run npm ci");
    assert!(
        out.status.success(),
        "`npm ci` in {} failed:\n{}\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_replays_a_dead_letter_in_a_real_browser() {
    require_tools();
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("pseudonym.key"), KEY).expect("key");
    let yaml = format!(
        "mappings: {mappings}\n\
         pseudonym_key_file: pseudonym.key\n\
         store:\n  url: sqlite:{db}\n\
         http:\n  listen: 127.0.0.1:0\n\
         admin:\n  tokens:\n\
         \x20   - {{name: ops-alice, role: operator, sha256: \"{op}\"}}\n\
         \x20   - {{name: viewer-bob, role: viewer, sha256: \"{viewer}\"}}\n",
        mappings = packs_dir().display(),
        db = dir.path().join("kiungo.db").display(),
        op = sha256_hex(OPERATOR_TOKEN),
        viewer = sha256_hex(VIEWER_TOKEN),
    );
    let config_file = dir.path().join("kiungo.yaml");
    std::fs::write(&config_file, yaml).expect("config");
    let app = Application::build(Config::load(&config_file).expect("config loads"))
        .await
        .expect("start");
    let addr = app.http_addr();

    // A body that is not JSON is parked at ingest.
    let (status, body) = tokio::task::spawn_blocking(move || {
        http(
            addr,
            "POST",
            "/v1/events/cht",
            &[
                ("Content-Type", "application/json"),
                ("Authorization", &format!("Bearer {OPERATOR_TOKEN}")),
                ("X-Message-Id", "dashboard-test-1"),
            ],
            b"this is not JSON {",
        )
    })
    .await
    .expect("ingest request");
    let answer: Value = serde_json::from_slice(&body).unwrap_or_else(|e| {
        panic!(
            "ingest answer is not JSON ({e}): {}",
            String::from_utf8_lossy(&body)
        )
    });
    assert_eq!(status, 400, "ingest of a non-JSON body: {answer}");
    let id = answer["dead_letter_id"]
        .as_i64()
        .unwrap_or_else(|| panic!("no dead_letter_id in {answer}"));

    npm_ci_if_needed().await;
    let artifacts = artifacts_dir();
    std::fs::create_dir_all(&artifacts).expect("artifacts dir");
    let shot = artifacts.join("dashboard.png");
    let shot_desktop = artifacts.join("dashboard-desktop.png");
    for s in [&shot, &shot_desktop] {
        let _ = std::fs::remove_file(s);
    }
    let started = Instant::now();
    let run = tokio::process::Command::new("node")
        .arg("dashboard.mjs")
        .args(["--url", &format!("http://{addr}")])
        .args(["--token", OPERATOR_TOKEN])
        .args(["--viewer-token", VIEWER_TOKEN])
        .args(["--expect-dead-letter", &id.to_string()])
        // Replaying a body that is still not JSON parks it again: the
        // letter stays open with its replay counted.
        .args(["--expect-replay", "parked_again"])
        .arg("--screenshot")
        .arg(&shot)
        .arg("--chromium")
        .arg(chromium())
        .current_dir(browser_dir())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("dashboard.mjs did not finish within 120 s")
        .expect("run node dashboard.mjs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "dashboard.mjs failed ({}):\n{stderr}\n{stdout}",
        out.status
    );
    let report: Value = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("dashboard.mjs printed no JSON line:\n{stdout}"));
    assert_eq!(report["ok"], true, "dashboard.mjs report: {report}");
    eprintln!(
        "dashboard.mjs passed in {:.1} s: {}",
        started.elapsed().as_secs_f64(),
        report["checks"]
    );

    // The store saw the replay, by the operator token's holder.
    let store = app.store();
    let dl = store
        .dead_letter(id)
        .await
        .expect("read dead letter")
        .expect("dead letter exists");
    assert!(
        dl.state != "open" || dl.replay_count == 1,
        "dead letter {id} after the replay: state {}, replay_count {}",
        dl.state,
        dl.replay_count
    );
    assert_eq!(dl.replay_count, 1, "exactly one replay of dead letter {id}");
    let audit = store.audit_log(100).await.expect("audit log");
    let target = format!("dead_letter:{id}");
    assert!(
        audit
            .iter()
            .any(|(_, actor, action, t, _)| actor == "ops-alice"
                && action == "dead_letter.replay"
                && *t == target),
        "no replay of {target} by ops-alice in the audit log: {audit:?}"
    );
    assert!(
        !audit
            .iter()
            .any(|(_, actor, _, _, _)| actor == "viewer-bob"),
        "the viewer acted: {audit:?}"
    );

    for s in [&shot, &shot_desktop] {
        let bytes = std::fs::read(s).unwrap_or_else(|e| panic!("screenshot {}: {e}", s.display()));
        assert!(
            bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 10_000,
            "{} is not a real PNG screenshot ({} bytes)",
            s.display(),
            bytes.len()
        );
    }

    app.run_until(async {}).await;
}
