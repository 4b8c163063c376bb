//! `kiungo dhis2 reconcile`.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use clap::Subcommand;
use kiungo_connectors::dhis2::Dhis2Client;

use super::render::{Format, render};
use super::run::{Request, reconcile};
use crate::config::Config;
use crate::store::Store;

/// `kiungo dhis2 ...`
#[derive(Debug, Subcommand)]
pub enum Dhis2Action {
    /// Read a data set's values for a period back from DHIS2 and compare
    /// them with Kiungo's totals: missing, different, and values not from
    /// Kiungo (entered by hand: reported, never touched). Exit code 1
    /// when values are missing or different.
    Reconcile {
        /// Data set UID.
        #[arg(long)]
        data_set: String,
        /// Period id in the instance's calendar, e.g. `202401`.
        #[arg(long)]
        period: String,
        /// Only this org unit (UID); by default every org unit Kiungo
        /// has totals in for the data set and period.
        #[arg(long)]
        org_unit: Option<String>,
        /// With `--org-unit`: also read its descendants' values.
        #[arg(long, requires = "org_unit")]
        children: bool,
        /// `table` (default), `json` or `csv`.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// Mark the missing and different totals for a push (audited):
        /// the running service sends Kiungo's totals again.
        #[arg(long)]
        repair: bool,
    },
}

/// Runs a `dhis2` command.
pub fn run(config: Option<&Path>, actor: Option<String>, action: Dhis2Action) -> ExitCode {
    crate::cli::run_operator_command(config, actor, action, |config, actor, action| async move {
        execute(&config, &actor, action).await
    })
}

async fn execute(config: &Config, actor: &str, action: Dhis2Action) -> Result<ExitCode, String> {
    let Dhis2Action::Reconcile {
        data_set,
        period,
        org_unit,
        children,
        format,
        repair,
    } = action;
    let Some(dhis2) = &config.destinations.dhis2 else {
        return Err("destinations.dhis2: not configured".into());
    };
    let client = Dhis2Client::new(dhis2.server.clone()).map_err(|e| e.to_string())?;
    let store = Store::open(&config.store)
        .await
        .map_err(|e| e.to_string())?;
    let request = Request {
        data_set,
        period,
        org_unit,
        children,
    };
    let report = reconcile(&client, &store, &request)
        .await
        .map_err(|e| e.to_string())?;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(render(&report, format).as_bytes());
    let repairable = report.repairable();
    if repair && !repairable.is_empty() {
        let target = format!("dhis2:{}:{}", report.data_set, report.period);
        store
            .repair_totals(&repairable, actor, &target, crate::store::now_ms())
            .await
            .map_err(|e| e.to_string())?;
        // Not to stdout: keeps `--format json|csv` machine-readable.
        eprintln!(
            "{} total(s) marked for a push; the running service sends them",
            repairable.len()
        );
    }
    Ok(if repairable.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
