//! `kiungo dlq list|show|replay|discard`.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use clap::Subcommand;
use kiungo_mappings::{LoadOptions, MappingSet, PseudonymKey};

use crate::config::Config;
use crate::ingest::Limits;
use crate::store::{DeadLetterFilter, Store};

/// `kiungo dlq ...`
#[derive(Debug, Subcommand)]
pub enum DlqAction {
    /// List dead letters, newest first (no payloads).
    List {
        /// Only `ingest`, `fhir` or `dhis2`.
        #[arg(long)]
        stage: Option<String>,
        /// Only this source app.
        #[arg(long)]
        source: Option<String>,
        /// Only this reason code.
        #[arg(long)]
        reason: Option<String>,
        /// Only this mapping.
        #[arg(long)]
        mapping: Option<String>,
        /// Only `open` (default), `replayed` or `discarded`; `all` for any.
        #[arg(long, default_value = "open")]
        state: String,
        /// Only those parked in the last DURATION (e.g. `2h`, `7d`).
        #[arg(long)]
        since: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// Show one dead letter with its payload and headers.
    Show {
        /// Dead letter id.
        id: i64,
    },
    /// Replay dead letters (after a mapping or metadata fix).
    Replay {
        /// Dead letter ids.
        #[arg(required = true)]
        ids: Vec<i64>,
    },
    /// Discard dead letters: they will not be delivered; payloads are dropped.
    Discard {
        /// Dead letter ids.
        #[arg(required = true)]
        ids: Vec<i64>,
    },
}

/// `text` with control characters (terminal escape sequences, carriage
/// returns, newlines) and bidirectional overrides escaped (`\u{1b}`), so
/// that what a message carried cannot drive or forge the terminal.
pub fn terminal_safe(text: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char = |c: char| {
        c.is_control()
            || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !text.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if unsafe_char(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// The stages a dead letter is parked at.
pub const STAGES: [&str; 3] = ["ingest", "fhir", "dhis2"];

/// The states `dlq list --state` takes.
pub const STATES: [&str; 4] = ["open", "replayed", "discarded", "all"];

/// Milliseconds since the epoch as `2026-12-04T12:31:54Z`.
fn utc(ms: i64) -> String {
    let Ok(ms) = u64::try_from(ms) else {
        return "-".to_owned();
    };
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(at).to_string()
}

/// Runs a `dlq` command.
pub fn run(config: Option<&Path>, actor: Option<String>, action: DlqAction) -> ExitCode {
    crate::cli::run_operator_command(config, actor, action, |config, actor, action| async move {
        execute(&config, &actor, action).await
    })
}

async fn execute(config: &Config, actor: &str, action: DlqAction) -> Result<ExitCode, String> {
    let store = Store::open(&config.store)
        .await
        .map_err(|e| e.to_string())?;
    let mut out = std::io::stdout().lock();
    match action {
        DlqAction::List {
            stage,
            source,
            reason,
            mapping,
            state,
            since,
            limit,
        } => {
            if let Some(s) = stage.as_deref()
                && !STAGES.contains(&s)
            {
                return Err(format!(
                    "--stage {}: unknown stage (one of: {})",
                    terminal_safe(s),
                    STAGES.join(", ")
                ));
            }
            if !STATES.contains(&state.as_str()) {
                return Err(format!(
                    "--state {}: unknown state (one of: {})",
                    terminal_safe(&state),
                    STATES.join(", ")
                ));
            }
            let since = match since {
                Some(s) => {
                    let d =
                        humantime::parse_duration(&s).map_err(|e| format!("--since {s}: {e}"))?;
                    Some(crate::store::now_ms() - i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
                }
                None => None,
            };
            let filter = DeadLetterFilter {
                state: (state != "all").then_some(state),
                source,
                reason_code: reason,
                mapping,
                stage,
                since,
                limit: Some(limit),
            };
            let list = store
                .dead_letters(&filter)
                .await
                .map_err(|e| e.to_string())?;
            let _ = writeln!(
                out,
                "{:>6}  {:<20} {:<7} {:<10} {:<24} {:<22} {:<9} reason",
                "id", "parked (UTC)", "stage", "source", "mapping", "code", "state"
            );
            // Sources, mappings and reasons can hold what a message
            // carried: printed escaped, never as terminal controls.
            for d in &list {
                let _ = writeln!(
                    out,
                    "{:>6}  {:<20} {:<7} {:<10} {:<24} {:<22} {:<9} {}",
                    d.id,
                    utc(d.received_at),
                    terminal_safe(&d.stage),
                    terminal_safe(&d.source),
                    terminal_safe(d.mapping.as_deref().unwrap_or("-")),
                    terminal_safe(&d.reason_code),
                    terminal_safe(&d.state),
                    terminal_safe(&d.reason)
                );
            }
            let _ = writeln!(out, "{} dead letter(s)", list.len());
            Ok(ExitCode::SUCCESS)
        }
        DlqAction::Show { id } => match store.dead_letter(id).await.map_err(|e| e.to_string())? {
            Some(d) => {
                // Client data on a terminal: audited like the admin API's
                // payload route, before it is shown.
                store
                    .audit(
                        actor,
                        "dead_letter.read_payload",
                        &format!("dead_letter:{id}"),
                        Some("kiungo dlq show"),
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                let mut v = serde_json::to_value(&d).map_err(|e| e.to_string())?;
                v["payload"] = match &d.payload {
                    Some(p) => match serde_json::from_slice::<serde_json::Value>(p) {
                        Ok(json) => json,
                        Err(_) => {
                            serde_json::Value::String(String::from_utf8_lossy(p).into_owned())
                        }
                    },
                    None => serde_json::Value::Null,
                };
                v["headers"] = d
                    .headers
                    .as_deref()
                    .and_then(|h| serde_json::from_str(h).ok())
                    .unwrap_or(serde_json::Value::Null);
                let _ = writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(&v).unwrap_or_default()
                );
                Ok(ExitCode::SUCCESS)
            }
            None => Err(format!("no dead letter {id}")),
        },
        DlqAction::Replay { ids } => {
            // The key `kiungo run` uses (environment, else
            // `pseudonym_key_file`). Without it, events whose mapping calls
            // pseudonym() would only be parked again: those are refused.
            let key = config.pseudonym_key()?;
            let keyless = key.is_none();
            let mappings = MappingSet::load_dir(
                &config.mappings,
                LoadOptions {
                    pseudonym_key: key,
                    calendar: config.dhis2_calendar(),
                    ..LoadOptions::default()
                },
            )
            .map_err(|e| e.to_string())?;
            let limits = Limits {
                max_bytes: config.http.max_body_bytes.max(64 * 1024 * 1024),
            };
            let mut failed = false;
            for id in ids {
                if keyless
                    && let Some(d) = store.dead_letter(id).await.map_err(|e| e.to_string())?
                    && let Some(m) = mappings.mappings().iter().find(|m| {
                        m.source == d.source
                            && std::fs::read_to_string(&m.file)
                                .is_ok_and(|t| t.contains("pseudonym("))
                    })
                {
                    eprintln!(
                        "error: {id}: not replayed: mapping `{}` for source `{}` calls pseudonym() and no pseudonym key is set ({} or pseudonym_key_file, the key `kiungo run` uses); replayed without it the event would be parked again",
                        terminal_safe(&m.id),
                        terminal_safe(&d.source),
                        PseudonymKey::ENV_VAR
                    );
                    failed = true;
                    continue;
                }
                let r = crate::dlq::replay(&store, &mappings, limits, id, actor)
                    .await
                    .map_err(|e| e.to_string())?;
                failed |= !matches!(
                    r,
                    crate::dlq::ReplayResult::Ingested { .. }
                        | crate::dlq::ReplayResult::Requeued
                        | crate::dlq::ReplayResult::Remapped { .. }
                        | crate::dlq::ReplayResult::Remarked
                );
                let _ = writeln!(
                    out,
                    "{id}: {}",
                    serde_json::to_string(&r).unwrap_or_default()
                );
            }
            Ok(if failed {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        DlqAction::Discard { ids } => {
            let n = store
                .discard_dead_letters(&ids, actor, crate::store::now_ms())
                .await
                .map_err(|e| e.to_string())?;
            let _ = writeln!(out, "{n} of {} discarded", ids.len());
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::terminal_safe;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(terminal_safe("plain reason"), "plain reason");
        assert_eq!(
            terminal_safe("a\x1b[31mb\r\nc\u{202e}d"),
            "a\\u{1b}[31mb\\r\\nc\\u{202e}d"
        );
    }
}
