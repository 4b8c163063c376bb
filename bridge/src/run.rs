//! `kiungo run`: logging, runtime, signals.

use std::path::Path;
use std::process::ExitCode;

use tracing::error;

use crate::app::Application;
use crate::config::Config;

/// Installs the log subscriber: JSON lines when `KIUNGO_LOG_FORMAT=json`
/// (production), human-readable otherwise; level from `RUST_LOG`
/// (default `info`), with `sqlx` at `warn` unless `RUST_LOG` names it.
pub fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let rust_log = std::env::var("RUST_LOG").ok();
    let filter = EnvFilter::try_new(crate::signals::filter_directives(rust_log.as_deref()))
        .unwrap_or_else(|_| EnvFilter::new(crate::signals::filter_directives(None)));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if std::env::var("KIUNGO_LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Stack size for threads spawned without an explicit one (256 MiB of
/// address space; only the pages used are memory).
///
/// `lapin` parses AMQP header tables on its `lapin-io-loop` thread, which
/// it spawns with the default stack size (2 MiB), recursing once per level
/// of nesting; a table nested 1,000 deep (7 KB) overflowed it and aborted
/// the process. A 128 KiB frame (RabbitMQ's default `frame_max`) holds at
/// most about 18,700 levels; `tests/tests/amqp_poison.rs` sends 18,000
/// to a debug build. `RUST_MIN_STACK` is read by the standard library
/// once, before the first thread starts, so `kiungo run` sets it by
/// re-executing itself when it is not set.
pub const MIN_STACK: &str = "268435456";

/// Re-executes this process with `RUST_MIN_STACK` set to [`MIN_STACK`]
/// unless it is set already (an operator's own value wins). Returns only
/// if it is set, or if re-executing failed (then with a warning).
fn ensure_min_stack() {
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        if std::env::var_os("RUST_MIN_STACK").is_some() {
            return;
        }
        let Ok(exe) = std::env::current_exe() else {
            return;
        };
        let error = std::process::Command::new(exe)
            .args(std::env::args_os().skip(1))
            .env("RUST_MIN_STACK", MIN_STACK)
            .exec();
        eprintln!(
            "warning: could not re-execute with RUST_MIN_STACK={MIN_STACK} ({error}); set it in the environment: \
             without it a deeply nested AMQP header table can crash the process"
        );
    }
}

/// Runs the service until SIGINT or SIGTERM.
pub fn run(config: Option<&Path>) -> ExitCode {
    ensure_min_stack();
    init_logging();
    let config = match Config::load_or_default(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let otel = match crate::telemetry::OtlpSettings::from_env() {
        Ok(otel) => otel,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    runtime.block_on(async {
        let app = match Application::build_traced(config, otel).await {
            Ok(app) => app,
            Err(e) => {
                error!(error = %e, "cannot start");
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        };
        app.run_until(shutdown_signal()).await;
        ExitCode::SUCCESS
    })
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
