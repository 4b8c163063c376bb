//! The `kiungo` command line.
//!
//! Commands print results to standard output and problems to standard
//! error; the exit code is 0 on success, 1 when the checked input has
//! problems, 2 when the command itself could not run.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kiungo_mappings::{Event, LoadOptions, MappingSet, PseudonymKey};

/// Kiungo: carries mHealth app events into DHIS2 and FHIR servers.
#[derive(Debug, Parser)]
#[command(name = "kiungo", version, about)]
pub struct Cli {
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service: consume from RabbitMQ and HTTP, map, store.
    Run {
        /// Config file (YAML). Without it, defaults: SQLite `kiungo.db`,
        /// mappings from `mappings/packs`, HTTP on 127.0.0.1:8080, no
        /// RabbitMQ.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Inspect, replay or discard dead letters.
    Dlq {
        /// Config file (store and mappings); defaults as for `run`.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Who is acting, for the audit log (default: $USER).
        #[arg(long)]
        actor: Option<String>,
        /// What to do.
        #[command(subcommand)]
        action: crate::dlq_cli::DlqAction,
    },
    /// Work with mapping files.
    Mappings {
        /// What to do with them.
        #[command(subcommand)]
        action: MappingsAction,
    },
    /// Map one event and print the FHIR entries and DHIS2 contributions it
    /// yields (dry run: nothing is sent or stored).
    Map {
        /// The mapping file to use.
        #[arg(long)]
        mapping: PathBuf,
        /// Source app of the event (default: the mapping's source).
        #[arg(long)]
        source: Option<String>,
        /// Message id the event arrives with.
        #[arg(long)]
        message_id: Option<String>,
        /// Use the fixed test key for `pseudonym()` instead of
        /// `KIUNGO_PSEUDONYM_KEY`, as test cases do.
        #[arg(long)]
        test_key: bool,
        /// The event payload, a JSON file.
        event: PathBuf,
    },
    /// Run local DHIS2 and FHIR simulators until Ctrl-C.
    Sandbox(crate::sandbox::SandboxArgs),
    /// Check a config file.
    Config {
        /// What to do.
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// DHIS2 operations: `reconcile` (does DHIS2 hold what Kiungo sent?).
    Dhis2 {
        /// Config file (store and DHIS2 destination); defaults as for `run`.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Who is acting, for the audit log of `--repair` (default: $USER).
        #[arg(long)]
        actor: Option<String>,
        /// What to do.
        #[command(subcommand)]
        action: crate::reconcile::Dhis2Action,
    },
    /// Admin API tokens.
    Admin {
        /// What to do.
        #[command(subcommand)]
        action: AdminAction,
    },
}

/// `kiungo config ...`
#[derive(Debug, Subcommand)]
pub enum ConfigAction {
    /// Load the config (with environment overrides), its mappings and its
    /// secrets, and print every problem with its location.
    Check {
        /// Config file (YAML).
        #[arg(long, short)]
        config: PathBuf,
        /// Also ask DHIS2 (`destinations.dhis2`): the credentials, the
        /// server's version and calendar, and every reference the mappings
        /// name statically (data elements in data sets of the rules'
        /// period types assigned to the org units, option combos of the
        /// data elements' category combos), each problem with its mapping
        /// file and line.
        #[arg(long)]
        online: bool,
    },
}

/// `kiungo admin ...`
#[derive(Debug, Subcommand)]
pub enum AdminAction {
    /// Make a new random token and print the config lines (with its
    /// SHA-256) that admit it.
    Token {
        /// Who will hold it (recorded in the audit log).
        #[arg(long)]
        name: String,
        /// `app`, `viewer` or `operator`.
        #[arg(long, value_parser = parse_role)]
        role: crate::admin::Role,
    },
}

fn parse_role(s: &str) -> Result<crate::admin::Role, String> {
    match s {
        "app" => Ok(crate::admin::Role::App),
        "viewer" => Ok(crate::admin::Role::Viewer),
        "operator" => Ok(crate::admin::Role::Operator),
        other => Err(format!("`{other}`: expected app, viewer or operator")),
    }
}

/// `kiungo mappings ...`
#[derive(Debug, Subcommand)]
pub enum MappingsAction {
    /// Load every mapping under DIR and print each problem with its location.
    Validate {
        /// Directory of mapping files (searched recursively).
        dir: PathBuf,
    },
    /// Run every mapping's test cases under DIR, with a diff on mismatch.
    Test {
        /// Directory of mapping files (searched recursively).
        dir: PathBuf,
    },
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Run { config } => crate::run::run(config.as_deref()),
        Command::Dlq {
            config,
            actor,
            action,
        } => crate::dlq_cli::run(config.as_deref(), actor, action),
        Command::Mappings {
            action: MappingsAction::Validate { dir },
        } => validate(&dir),
        Command::Mappings {
            action: MappingsAction::Test { dir },
        } => test(&dir),
        Command::Map {
            mapping,
            source,
            message_id,
            test_key,
            event,
        } => map(&mapping, source, message_id, test_key, &event),
        Command::Sandbox(args) => crate::sandbox::run_cli(args),
        Command::Dhis2 {
            config,
            actor,
            action,
        } => crate::reconcile::run_cli(config.as_deref(), actor, action),
        Command::Config {
            action: ConfigAction::Check { config, online },
        } => crate::config_check::run(&config, online),
        Command::Admin {
            action: AdminAction::Token { name, role },
        } => {
            print!("{}", crate::config_check::new_token(&name, role));
            ExitCode::SUCCESS
        }
    }
}

fn load(dir: &std::path::Path) -> Result<MappingSet, ExitCode> {
    MappingSet::load_dir(dir, LoadOptions::default()).map_err(|errors| {
        for e in &errors.0 {
            eprintln!("error: {e}");
        }
        eprintln!("{} problem(s) found", errors.0.len());
        ExitCode::from(1)
    })
}

fn validate(dir: &std::path::Path) -> ExitCode {
    match load(dir) {
        Ok(set) => {
            // Each test case must be able to run: its expected file there,
            // its event mapped (or refused, when it expects an error).
            let mut problems = set.check_tests();
            // Each event field read must be in a test event: a near miss
            // of one that is fails, a field no test event has is shown.
            let fields = set.check_event_fields();
            problems.extend(fields.errors);
            for w in &fields.warnings {
                eprintln!("warning: {w}");
            }
            for n in &fields.unchecked {
                eprintln!("note: {n}");
            }
            if !problems.is_empty() {
                // In file order: a misspelt field before the test cases it breaks.
                problems
                    .sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
                for e in &problems {
                    eprintln!("error: {e}");
                }
                eprintln!("{} problem(s) found", problems.len());
                return ExitCode::from(1);
            }
            let mut out = std::io::stdout().lock();
            for m in set.mappings() {
                let _ = writeln!(out, "ok  {} v{}  ({})", m.id, m.version, m.file.display());
            }
            let _ = match fields.warnings.len() {
                0 => writeln!(out, "{} mapping(s) valid", set.mappings().len()),
                n => writeln!(
                    out,
                    "{} mapping(s) valid, {n} warning(s): event fields no test event has",
                    set.mappings().len()
                ),
            };
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

fn test(dir: &std::path::Path) -> ExitCode {
    let set = match load(dir) {
        Ok(set) => set,
        Err(code) => return code,
    };
    let mut out = std::io::stdout().lock();
    let (mut passed, mut failed) = (0, 0);
    for report in set.run_tests() {
        let bad = report.failures.len();
        passed += report.run - bad;
        failed += bad;
        let status = if bad == 0 { "ok  " } else { "FAIL" };
        let _ = writeln!(
            out,
            "{status} {}: {}/{} test(s) passed",
            report.mapping,
            report.run - bad,
            report.run
        );
        for f in &report.failures {
            let _ = writeln!(out, "  {}: {f}", report.file.display());
        }
    }
    let _ = writeln!(out, "{passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn map(
    mapping: &std::path::Path,
    source: Option<String>,
    message_id: Option<String>,
    test_key: bool,
    event: &std::path::Path,
) -> ExitCode {
    let key = if test_key {
        Some(PseudonymKey::for_tests())
    } else {
        match PseudonymKey::from_env() {
            Ok(k) => k,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        }
    };
    let options = LoadOptions {
        pseudonym_key: key,
        ..LoadOptions::default()
    };
    let set = match MappingSet::load_files(&[mapping.to_path_buf()], options) {
        Ok(set) => set,
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("error: {e}");
            }
            return ExitCode::from(1);
        }
    };
    let payload = match std::fs::read_to_string(event)
        .map_err(|e| e.to_string())
        .and_then(|t| {
            serde_json::from_str::<serde_json::Value>(&t).map_err(|e| format!("not JSON: {e}"))
        }) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {}: {e}", event.display());
            return ExitCode::from(1);
        }
    };
    let source = source
        .or_else(|| set.mappings().first().map(|m| m.source.clone()))
        .unwrap_or_default();
    match set.map(&Event {
        source,
        message_id,
        payload: std::sync::Arc::new(payload),
    }) {
        Ok(mapped) => {
            let text = serde_json::to_string_pretty(&mapped).unwrap_or_default();
            let _ = writeln!(std::io::stdout().lock(), "{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            // The mapping author's own event: the values help them.
            eprintln!("error: {}", e.with_values());
            ExitCode::from(1)
        }
    }
}

/// The frame every operator command (`dlq`, `dhis2`) shares: loads the
/// config (`config`, or the default places), names the actor (`--actor`,
/// else `$USER`, else `cli`) for the audit log, and runs `execute` on a
/// current-thread runtime. A problem before or inside the command is
/// printed once as `error: …` and exits 2.
pub(crate) fn run_operator_command<A, F, Fut>(
    config: Option<&std::path::Path>,
    actor: Option<String>,
    action: A,
    execute: F,
) -> ExitCode
where
    F: FnOnce(crate::config::Config, String, A) -> Fut,
    Fut: std::future::Future<Output = Result<ExitCode, String>>,
{
    let config = match crate::config::Config::load_or_default(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let actor = actor
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "cli".into());
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    runtime.block_on(async move {
        match execute(config, actor, action).await {
            Ok(code) => code,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        }
    })
}
