//! The static DHIS2 preflight against the DHIS2 simulator (issue 14):
//! with an empty store, a mapping's problems reach `/v1/preflight` and
//! `kiungo config check --online` with their mapping file and line; the
//! credentials and the calendar are checked too, and the shipped packs
//! check out. Against a sandbox in the Ethiopian calendar, a deployment
//! configured `calendar: ethiopian` passes the preflight and lands its
//! values in Ethiopian periods; one left on `iso8601` is told. An
//! attribute option combo of another category combo than the data set's
//! is reported at its line, and a completeness grace past the data set's
//! `timelyDays` is a warning that does not fail the check.
//!
//! The broken mapping is the CHT pack with three faults: `facilities.csv`
//! gains Kambia (a district assigned no data set of ANC visits) and an
//! org unit DHIS2 does not know, and the outreach combo becomes one of
//! another category combo.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use kiungo::app::Application;
use kiungo::config::Config;
use kiungo::sandbox::{Sandbox, SandboxConfig, SystemCalendar};
use kiungo::store::Backend;
use kiungo::store::scratch::ScratchDb;
use serde_json::Value;

const VIEWER: &str = "preflight-test-viewer-token-4f2a9c7e1b3d5a8c6e0f";
const OPERATOR: &str = "preflight-test-operator-token-8d1e6b0a7c2f4e9d3b5a";

/// The sandbox DHIS2 and FHIR servers, started with `config` (TLS set
/// up first, as the service does).
async fn sandbox(config: SandboxConfig) -> Sandbox {
    kiungo::tls::install_crypto_provider();
    Sandbox::start(config).await.expect("sandbox")
}

fn packs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../mappings/packs")
}

/// The CHT pack, copied into `dir/mappings` with its three faults.
fn broken_pack(dir: &Path) -> PathBuf {
    let mappings = dir.join("mappings");
    let cht = mappings.join("cht-anc");
    std::fs::create_dir_all(cht.join("fixtures")).expect("mkdir");
    let from = packs().join("cht-anc");
    for entry in std::fs::read_dir(from.join("fixtures")).expect("fixtures") {
        let path = entry.expect("entry").path();
        std::fs::copy(
            &path,
            cht.join("fixtures").join(path.file_name().expect("name")),
        )
        .expect("copy fixture");
    }
    let mapping = std::fs::read_to_string(from.join("anc-visit.yaml")).expect("mapping");
    let outreach = "{ visit_location: outreach, coc: PT59n8BQbqM }";
    assert!(
        mapping.contains(outreach),
        "the pack changed: adapt this test"
    );
    std::fs::write(
        cht.join("anc-visit.yaml"),
        mapping.replace(outreach, "{ visit_location: outreach, coc: Prlt0C1RF0s }"),
    )
    .expect("write mapping");
    let mut csv = std::fs::read_to_string(from.join("facilities.csv")).expect("csv");
    assert_eq!(csv.lines().count(), 4, "the pack changed: adapt this test");
    csv.push_str("kambia-district,PMa2VCrupOd,Kambia\nnowhere,NoSuchOrgU1,Nowhere\n");
    std::fs::write(cht.join("facilities.csv"), csv).expect("write csv");
    mappings
}

/// A config for `mappings` with DHIS2 at the simulator.
fn config(dir: &Path, mappings: &Path, store: &str, dhis2: &str, extra: &str) -> PathBuf {
    let password = dir.join("dhis2-password");
    std::fs::write(&password, "district").expect("password");
    let yaml = format!(
        "mappings: '{}'\nstore:\n  url: '{store}'\nhttp:\n  listen: 127.0.0.1:0\n  admin_cache: 0s\n\
         admin:\n  tokens:\n    - {{name: viewer, role: viewer, sha256: {}}}\n\
         \x20   - {{name: operator, role: operator, sha256: {}}}\n\
         destinations:\n  dhis2:\n    server:\n      base_url: '{dhis2}'\n\
         \x20     auth: {{type: basic, username: admin, password: {{file: '{}'}}}}\n\
         \x20   retry: {{base_delay: 50ms, max_delay: 200ms, max_age: 10m}}\n{extra}",
        mappings.display(),
        kiungo::admin::token_hash_hex(VIEWER),
        kiungo::admin::token_hash_hex(OPERATOR),
        password.display(),
    );
    let file = dir.join("kiungo.yaml");
    std::fs::write(&file, yaml).expect("config");
    file
}

async fn check_online(file: &Path) -> Output {
    let file = file.to_owned();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_kiungo"))
            .args(["config", "check", "--online", "-c"])
            .arg(&file)
            .output()
            .expect("run kiungo")
    })
    .await
    .expect("join")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The problems of the broken pack, as both outputs print them: the
/// mapping file and line of the field, the id, where a table cell is.
fn assert_the_three_faults(out: &str, mapping: &Path) {
    let m = mapping.join("cht-anc/anc-visit.yaml").display().to_string();
    let csv = mapping.join("cht-anc/facilities.csv").display().to_string();
    let expected = [
        format!(
            "{m}:140: cht-anc-visit dhis2[0].org_unit: org unit `NoSuchOrgU1` not found in DHIS2 \
             (or not visible to this user) (from table `facilities`, {csv}:6)"
        ),
        format!(
            "{m}:140: cht-anc-visit dhis2[0].org_unit: org unit `PMa2VCrupOd` (Kambia) is assigned \
             no Monthly data set holding data element `fbfJHSPpUQD` (ANC 1st visit)"
        ),
        format!(
            "{m}:139: cht-anc-visit dhis2[0].category_option_combo: category option combo \
             `Prlt0C1RF0s` (Fixed, <1y) belongs to category combo `dzjKKQq0cSO`, but data \
             element `fbfJHSPpUQD` (ANC 1st visit) takes `KYYSTxeVw28`"
        ),
    ];
    for e in &expected {
        assert!(out.contains(e.as_str()), "missing:\n{e}\nin:\n{out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_check_online_reports_each_problem_with_its_file_and_line() {
    let sandbox = sandbox(SandboxConfig::for_test()).await;
    let dir = tempfile::tempdir().expect("dir");
    let store = format!("sqlite:{}", dir.path().join("k.db").display());

    // The shipped packs check out.
    let file = config(dir.path(), &packs(), &store, &sandbox.dhis2_url(), "");
    let out = check_online(&file).await;
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("dhis2 2.40.3 (calendar iso8601): ") && stdout.contains(" rules check out"),
        "{stdout}"
    );

    // The broken pack: every fault, and exit 1.
    let mappings = broken_pack(dir.path());
    let file = config(dir.path(), &mappings, &store, &sandbox.dhis2_url(), "");
    let out = check_online(&file).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_the_three_faults(&stderr, &mappings);
    assert!(stderr.ends_with("3 problem(s)\n"), "{stderr}");

    // Without --online nothing is asked: the config itself is fine.
    let offline = tokio::task::spawn_blocking({
        let file = file.clone();
        move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_kiungo"))
                .args(["config", "check", "-c"])
                .arg(&file)
                .output()
                .expect("run kiungo")
        }
    })
    .await
    .expect("join");
    assert!(offline.status.success(), "{}", text(&offline.stderr));

    // Another calendar than the server's.
    let file = config(
        dir.path(),
        &packs(),
        &store,
        &sandbox.dhis2_url(),
        "    calendar: ethiopian\n",
    );
    let out = check_online(&file).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "destinations.dhis2: the server's system calendar is `iso8601` but \
             destinations.dhis2.calendar is `ethiopian`"
        ),
        "{stderr}"
    );

    // Credentials DHIS2 refuses.
    std::fs::write(dir.path().join("dhis2-password"), "wrong").expect("password");
    let file = dir.path().join("kiungo.yaml");
    let yaml = std::fs::read_to_string(&file).expect("config");
    std::fs::write(&file, yaml.replace("    calendar: ethiopian\n", "")).expect("config");
    let out = check_online(&file).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("destinations.dhis2: DHIS2 refused the credentials (HTTP 401 from /api/me"),
        "{stderr}"
    );
    assert!(stderr.ends_with("1 problem(s)\n"), "{stderr}");
    sandbox.handle().stop().await;
}

/// `/v1/preflight` of a service started on an empty store shows the
/// broken pack's problems with their files and lines, the server, and
/// the (empty) stored-values check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_start_up_preflight_shows_mapping_problems_with_an_empty_store() {
    let sandbox = sandbox(SandboxConfig::for_test()).await;
    let dir = tempfile::tempdir().expect("dir");
    let db = ScratchDb::new(Backend::Sqlite).await.expect("db");
    let mappings = broken_pack(dir.path());
    let file = config(
        dir.path(),
        &mappings,
        &db.config.url,
        &sandbox.dhis2_url(),
        "",
    );
    let app = Application::build(Config::load(&file).expect("config loads"))
        .await
        .expect("start");
    let view = static_preflight(&app).await;
    assert_eq!(view["complete"], false, "{view}");
    assert_eq!(
        view["missing"],
        Value::Array(vec![]),
        "an empty store: {view}"
    );
    assert_eq!(view["server"]["version"], "2.40.3");
    assert_eq!(view["server"]["calendar"], "iso8601");
    let s = &view["static"];
    assert_eq!(s["rules"], 1, "{s}");
    assert_eq!(s["problems_total"], 3, "{s}");
    let problems = s["problems"].as_array().expect("problems");
    let texts: Vec<&str> = problems.iter().filter_map(|p| p["text"].as_str()).collect();
    assert_the_three_faults(&texts.join("\n"), &mappings);
    let unknown = &problems[0];
    assert_eq!(unknown["kind"], "not_found");
    assert_eq!(
        unknown["file"],
        mappings
            .join("cht-anc/anc-visit.yaml")
            .display()
            .to_string()
    );
    assert_eq!(unknown["line"], 140);
    assert_eq!(unknown["field"], "dhis2[0].org_unit");
    assert_eq!(unknown["id"], "NoSuchOrgU1");
    app.run_until(async {}).await;
    sandbox.handle().stop().await;
}

/// Polls `/v1/preflight` until the static preflight has run.
async fn static_preflight(app: &Application) -> Value {
    let url = format!("http://{}/v1/preflight", app.http_addr());
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let body: Value = http
            .get(&url)
            .bearer_auth(VIEWER)
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("json");
        if body["dhis2"]["static"].is_object() {
            return body["dhis2"].clone();
        }
        assert!(
            Instant::now() < deadline,
            "no static preflight within 60 s: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A CHT visit of 15 March 2024 (6 Megabit 2016 in the Ethiopian
/// calendar) sent to Kiungo configured `calendar: ethiopian`, in front of
/// a sandbox DHIS2 whose system calendar is Ethiopian: the preflight
/// finds no calendar problem and the value lands in `201607`, a period
/// the simulator accepts only because it exists in its calendar. The same
/// sandbox tells a deployment left on `iso8601`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ethiopian_deployment_lands_its_values_in_an_ethiopian_dhis2() {
    let mut sandbox_config = SandboxConfig::for_test();
    sandbox_config.dhis2.calendar = SystemCalendar::Ethiopian;
    let sandbox = sandbox(sandbox_config).await;
    let dir = tempfile::tempdir().expect("dir");
    let db = ScratchDb::new(Backend::Sqlite).await.expect("db");

    // Left on iso8601: `kiungo config check --online` names the mismatch.
    let file = config(
        dir.path(),
        &packs(),
        &db.config.url,
        &sandbox.dhis2_url(),
        "",
    );
    let out = check_online(&file).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "destinations.dhis2: the server's system calendar is `ethiopian` but \
             destinations.dhis2.calendar is `iso8601`"
        ),
        "{stderr}"
    );

    let file = config(
        dir.path(),
        &packs(),
        &db.config.url,
        &sandbox.dhis2_url(),
        "    calendar: ethiopian\n    push_delay: 50ms\n    max_push_delay: 50ms\n",
    );
    let app = Application::build(Config::load(&file).expect("config loads"))
        .await
        .expect("start");
    let view = static_preflight(&app).await;
    assert_eq!(view["server"]["calendar"], "ethiopian", "{view}");
    assert_eq!(view["static"]["problems_total"], 0, "{view}");

    let visit =
        std::fs::read(packs().join("cht-anc/fixtures/anc-visit-1-facility.json")).expect("fixture");
    let response = reqwest::Client::new()
        .post(format!("http://{}/v1/events/cht", app.http_addr()))
        .bearer_auth(OPERATOR)
        .header("Content-Type", "application/json")
        .body(visit)
        .send()
        .await
        .expect("post");
    assert_eq!(response.status().as_u16(), 202);
    let deadline = Instant::now() + Duration::from_secs(60);
    let landed = loop {
        let values = sandbox.dhis2_values();
        if values["total"] != 0 {
            break values;
        }
        assert!(
            Instant::now() < deadline,
            "nothing landed within 60 s: {}",
            sandbox.dhis2_traffic()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let value = &landed["dataValues"][0];
    assert_eq!(value["period"], "201607", "{landed}");
    assert_eq!(value["dataElement"], "fbfJHSPpUQD", "{landed}");
    assert_eq!(value["orgUnit"], "DiszpKrYNg8", "{landed}");
    assert_eq!(value["value"], "1", "{landed}");
    app.run_until(async {}).await;
    sandbox.handle().stop().await;
}

/// The CHT pack sending its ANC visits under "Target" of the "Target vs
/// Result" attribute combo, whereas Reproductive Health, the data set
/// holding ANC 1st visit, has the default category combo: reported at the
/// rule's `attribute_option_combo` line. The default (the shipped pack)
/// checks out, as above.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attribute_option_combo_of_another_category_combo_is_reported_at_its_line() {
    let dir = tempfile::tempdir().expect("dir");
    let mut metadata: Value =
        serde_json::from_str(kiungo::sandbox::DEFAULT_METADATA).expect("metadata");
    metadata["attributeOptionCombos"] = serde_json::json!([
        {"id": "TgtResAoc01", "name": "Target", "categoryCombo": {"id": "WBW7RjsApsv"}}
    ]);
    let metadata_file = dir.path().join("metadata.json");
    std::fs::write(&metadata_file, metadata.to_string()).expect("metadata");
    let mut sandbox_config = SandboxConfig::for_test();
    sandbox_config.dhis2.metadata = Some(metadata_file);
    let sandbox = sandbox(sandbox_config).await;

    let mappings = dir.path().join("mappings");
    let cht = mappings.join("cht-anc");
    std::fs::create_dir_all(cht.join("fixtures")).expect("mkdir");
    let from = packs().join("cht-anc");
    for entry in std::fs::read_dir(from.join("fixtures")).expect("fixtures") {
        let path = entry.expect("entry").path();
        std::fs::copy(
            &path,
            cht.join("fixtures").join(path.file_name().expect("name")),
        )
        .expect("copy fixture");
    }
    std::fs::copy(from.join("facilities.csv"), cht.join("facilities.csv")).expect("csv");
    let mapping = std::fs::read_to_string(from.join("anc-visit.yaml")).expect("mapping");
    let period = "    period: { type: Monthly, date: visit_day }\n";
    let line = mapping
        .lines()
        .position(|l| format!("{l}\n") == period)
        .expect("the pack changed: adapt this test")
        + 2;
    std::fs::write(
        cht.join("anc-visit.yaml"),
        mapping.replace(
            period,
            &format!("{period}    attribute_option_combo: TgtResAoc01\n"),
        ),
    )
    .expect("write mapping");

    let store = format!("sqlite:{}", dir.path().join("k.db").display());
    let file = config(dir.path(), &mappings, &store, &sandbox.dhis2_url(), "");
    let out = check_online(&file).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let m = cht.join("anc-visit.yaml").display().to_string();
    let expected = format!(
        "{m}:{line}: cht-anc-visit dhis2[0].attribute_option_combo: attribute option combo \
         `TgtResAoc01` (Target) belongs to category combo `WBW7RjsApsv`, but the Monthly data \
         sets holding data element "
    );
    assert!(
        stderr.contains(&expected),
        "missing:\n{expected}\nin:\n{stderr}"
    );
    assert!(
        stderr.contains("take `bjDvmb4bfuf` (`QX4ZTUbOt3a` (Reproductive Health))"),
        "{stderr}"
    );
    sandbox.handle().stop().await;
}

/// Reproductive Health has `timelyDays: 10` in the sandbox: a 12-day
/// grace makes every registration late, which is a warning on both
/// outputs (the check passes, `/v1/preflight` stays complete); a 2-day
/// grace says nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completeness_grace_past_timely_days_is_a_warning() {
    let sandbox = sandbox(SandboxConfig::for_test()).await;
    let dir = tempfile::tempdir().expect("dir");
    let db = ScratchDb::new(Backend::Sqlite).await.expect("db");
    let completeness = |grace: &str| {
        format!("    completeness:\n      - {{data_set: QX4ZTUbOt3a, grace: {grace}}}\n")
    };
    let warning = "destinations.dhis2.completeness[0].grace: warning: 12days is not shorter \
                   than data set `QX4ZTUbOt3a` (Reproductive Health)'s timelyDays (10)";

    let file = config(
        dir.path(),
        &packs(),
        &db.config.url,
        &sandbox.dhis2_url(),
        &completeness("2d"),
    );
    let out = check_online(&file).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        !text(&out.stdout).contains("warning"),
        "{}",
        text(&out.stdout)
    );

    let file = config(
        dir.path(),
        &packs(),
        &db.config.url,
        &sandbox.dhis2_url(),
        &completeness("12d"),
    );
    let out = check_online(&file).await;
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains(warning), "{stdout}");

    let app = Application::build(Config::load(&file).expect("config loads"))
        .await
        .expect("start");
    let view = static_preflight(&app).await;
    assert_eq!(view["complete"], true, "{view}");
    assert_eq!(view["static"]["problems_total"], 1, "{view}");
    let p = &view["static"]["problems"][0];
    assert_eq!(p["kind"], "grace_after_timely_days", "{p}");
    assert_eq!(p["severity"], "warning", "{p}");
    assert_eq!(p["field"], "completeness[0].grace", "{p}");
    assert!(
        p["text"].as_str().is_some_and(|t| t.starts_with(warning)),
        "{p}"
    );
    app.run_until(async {}).await;
    sandbox.handle().stop().await;
}
