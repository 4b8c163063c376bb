//! The service config: one YAML file (every field documented, unknown
//! fields rejected) plus environment overrides for what differs per
//! deployment or is secret:
//!
//! | variable             | overrides          |
//! |----------------------|--------------------|
//! | `KIUNGO_STORE_URL`   | `store.url`        |
//! | `KIUNGO_AMQP_URL`    | `rabbitmq.url`     |
//! | `KIUNGO_HTTP_LISTEN` | `http.listen`      |
//! | `KIUNGO_FEEDBACK_AMQP_URL` | `feedback.url` |
//! | `KIUNGO_LOG_FORMAT`  | `json` or `pretty` logs (not in the file) |
//! | `KIUNGO_PSEUDONYM_KEY` | `pseudonym_key_file` |
//!
//! `kiungo config check --config FILE` loads the file, the mappings and
//! every secret it refers to, and reports every problem with its place.
//!
//! Relative paths are relative to the config file's directory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kiungo_connectors::rabbitmq::RabbitConfig;
use serde::Deserialize;

use crate::delivery::config::DestinationsConfig;
use crate::ingest::BatchConfig;
use crate::store::StoreConfig;

/// The whole config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Directory of mapping files (searched recursively).
    #[serde(default = "default_mappings")]
    pub mappings: PathBuf,
    /// The durable store.
    #[serde(default)]
    pub store: StoreConfig,
    /// The RabbitMQ source; without it only HTTP ingest runs.
    #[serde(default)]
    pub rabbitmq: Option<RabbitConfig>,
    /// The HTTP server (ingest, and later the admin API).
    #[serde(default)]
    pub http: HttpConfig,
    /// Group-commit batching.
    #[serde(default)]
    pub ingest: BatchConfig,
    /// Where outputs are delivered.
    #[serde(default)]
    pub destinations: DestinationsConfig,
    /// File holding the key of `pseudonym()` in mappings (at least 32
    /// bytes). `KIUNGO_PSEUDONYM_KEY` takes precedence. Without either,
    /// events whose mapping needs a pseudonym are parked.
    #[serde(default)]
    pub pseudonym_key_file: Option<PathBuf>,
    /// Admin API tokens and roles.
    #[serde(default)]
    pub admin: crate::admin::AdminConfig,
    /// Status messages to apps over RabbitMQ; off without it.
    #[serde(default)]
    pub feedback: Option<crate::feedback::FeedbackConfig>,
    /// Log signals: how often the INFO summary line is written.
    #[serde(default)]
    pub log: crate::signals::LogConfig,
}

/// `http:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address to listen on; port 0 picks a free port.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Largest event body accepted over HTTP (AMQP has
    /// `rabbitmq.max_message_bytes`).
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// How long an HTTP ingest waits for its commit before answering 503.
    #[serde(default = "default_commit_timeout", with = "humantime_serde")]
    pub commit_timeout: Duration,
    /// How long the admin API and `/metrics` reuse a store count (backlog,
    /// flows, summary) for every dashboard poll and scrape: counting large
    /// tables takes time on PostgreSQL. `0s` reads every time.
    #[serde(default = "default_admin_cache", with = "humantime_serde")]
    pub admin_cache: Duration,
    /// Most connections open at once over the whole server (split evenly
    /// between its worker threads); further clients wait in the listen
    /// backlog.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// How long a client has to send a request's line and headers before
    /// it is answered 408 and disconnected (the body has
    /// `ingest.body_timeout`).
    #[serde(default = "default_client_request_timeout", with = "humantime_serde")]
    pub client_request_timeout: Duration,
    /// How long a connection being closed (after an answer to a body not
    /// read) may take before it is dropped.
    #[serde(
        default = "default_client_disconnect_timeout",
        with = "humantime_serde"
    )]
    pub client_disconnect_timeout: Duration,
    /// `POST /v1/events/{source}`: who may write (`auth`), rate limits,
    /// body deadline.
    #[serde(default)]
    pub ingest: crate::ingest::HttpIngestConfig,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            max_body_bytes: default_max_body(),
            commit_timeout: default_commit_timeout(),
            admin_cache: default_admin_cache(),
            max_connections: default_max_connections(),
            client_request_timeout: default_client_request_timeout(),
            client_disconnect_timeout: default_client_disconnect_timeout(),
            ingest: crate::ingest::HttpIngestConfig::default(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            mappings: default_mappings(),
            store: StoreConfig::default(),
            rabbitmq: None,
            http: HttpConfig::default(),
            ingest: BatchConfig::default(),
            destinations: DestinationsConfig::default(),
            pseudonym_key_file: None,
            admin: crate::admin::AdminConfig::default(),
            feedback: None,
            log: crate::signals::LogConfig::default(),
        }
    }
}

fn default_mappings() -> PathBuf {
    PathBuf::from("mappings/packs")
}
fn default_listen() -> String {
    "127.0.0.1:8080".into()
}
const fn default_max_body() -> usize {
    4 * 1024 * 1024
}
const fn default_commit_timeout() -> Duration {
    Duration::from_secs(30)
}
const fn default_admin_cache() -> Duration {
    Duration::from_secs(5)
}
const fn default_max_connections() -> usize {
    1024
}
const fn default_client_request_timeout() -> Duration {
    Duration::from_secs(5)
}
const fn default_client_disconnect_timeout() -> Duration {
    Duration::from_secs(1)
}

/// A config that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: {error}")]
    Read {
        /// The file.
        file: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// The YAML does not fit the config's shape: every problem found,
    /// each starting `FILE:LINE:COLUMN:` and quoting the lines around it.
    #[error("{}", problems.join("\n"))]
    Parse {
        /// The file.
        file: PathBuf,
        /// Each problem, secrets masked ([`crate::yaml_problems`]).
        problems: Vec<String>,
    },
    /// Values that parse but make no sense.
    #[error("{file}: {}", problems.join("; "))]
    Invalid {
        /// The file.
        file: PathBuf,
        /// Each problem, naming its field.
        problems: Vec<String>,
    },
}

impl Config {
    /// The DHIS2 calendar period ids are computed in when events are
    /// mapped: `destinations.dhis2.calendar`, or `iso8601` without a DHIS2
    /// destination.
    #[must_use]
    pub fn dhis2_calendar(&self) -> kiungo_mappings::period::Calendar {
        self.destinations
            .dhis2
            .as_ref()
            .map(|d| d.calendar)
            .unwrap_or_default()
    }

    /// The key of `pseudonym()`: `KIUNGO_PSEUDONYM_KEY`, else
    /// `pseudonym_key_file`, else none.
    pub fn pseudonym_key(&self) -> Result<Option<kiungo_mappings::PseudonymKey>, String> {
        use kiungo_mappings::PseudonymKey;
        if let Some(key) = PseudonymKey::from_env()? {
            return Ok(Some(key));
        }
        let Some(file) = &self.pseudonym_key_file else {
            return Ok(None);
        };
        let fail =
            |e: &dyn std::fmt::Display| format!("pseudonym_key_file {}: {e}", file.display());
        let bytes = std::fs::read(file).map_err(|e| fail(&e))?;
        let text = String::from_utf8_lossy(&bytes);
        PseudonymKey::new(text.trim().as_bytes())
            .map(Some)
            .map_err(|e| fail(&e))
    }

    /// Reads a config file, applies the environment overrides and checks it.
    pub fn load(file: &Path) -> Result<Self, ConfigError> {
        let config = Self::load_unchecked(file)?;
        config.check(file)?;
        Ok(config)
    }

    /// Reads a config file and applies the environment overrides, without
    /// checking the values (`kiungo config check` reports those together
    /// with the mappings' problems).
    pub fn load_unchecked(file: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|error| ConfigError::Read {
            file: file.into(),
            error,
        })?;
        let mut config: Self =
            crate::yaml_problems::from_str_all(&text, file).map_err(|problems| {
                ConfigError::Parse {
                    file: file.into(),
                    problems,
                }
            })?;
        if config.mappings.is_relative()
            && let Some(dir) = file.parent()
        {
            config.mappings = dir.join(&config.mappings);
        }
        if let Some(key) = config.pseudonym_key_file.as_mut()
            && key.is_relative()
            && let Some(dir) = file.parent()
        {
            *key = dir.join(&*key);
        }
        if let Some(dir) = file.parent() {
            config.admin.resolve_paths(dir);
            if let Some(f) = config.destinations.fhir.as_mut() {
                f.server.auth.resolve_paths(dir);
            }
            if let Some(d) = config.destinations.dhis2.as_mut() {
                d.server.auth.resolve_paths(dir);
            }
        }
        if let Some(path) = config.store.url.strip_prefix("sqlite:")
            && !path.starts_with('/')
            && !path.starts_with(':')
            && let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty())
        {
            config.store.url = format!("sqlite:{}", dir.join(path).display());
        }
        config.apply_env();
        Ok(config)
    }

    /// Reads `file` when one is given, else the defaults with the
    /// environment overrides applied (what `kiungo run` and `kiungo dlq`
    /// do without `--config`).
    pub fn load_or_default(file: Option<&Path>) -> Result<Self, ConfigError> {
        match file {
            Some(file) => Self::load(file),
            None => {
                let mut config = Self::default();
                config.apply_env();
                Ok(config)
            }
        }
    }

    /// Applies `KIUNGO_*` overrides.
    pub fn apply_env(&mut self) {
        if let Ok(url) = std::env::var("KIUNGO_STORE_URL") {
            self.store.url = url;
        }
        if let (Ok(url), Some(r)) = (std::env::var("KIUNGO_AMQP_URL"), self.rabbitmq.as_mut()) {
            r.url = url;
        }
        if let Ok(listen) = std::env::var("KIUNGO_HTTP_LISTEN") {
            self.http.listen = listen;
        }
        if let (Ok(url), Some(f)) = (
            std::env::var("KIUNGO_FEEDBACK_AMQP_URL"),
            self.feedback.as_mut(),
        ) {
            f.url = Some(url);
        }
    }

    /// Every problem at once.
    pub fn check(&self, file: &Path) -> Result<(), ConfigError> {
        let problems = self.problems();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid {
                file: file.into(),
                problems,
            })
        }
    }

    /// Every problem with the values, each naming its field.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(r) = &self.rabbitmq {
            problems.extend(r.problems());
        }
        // URLs that parse as text but cannot reach a broker (a wrong
        // scheme is reported once, by the section's own check).
        let amqp_urls = [
            self.rabbitmq
                .as_ref()
                .map(|r| ("rabbitmq.url", r.url.as_str())),
            self.feedback
                .as_ref()
                .and_then(|f| f.url.as_deref())
                .map(|u| ("feedback.url", u)),
        ];
        for (field, url) in amqp_urls.into_iter().flatten() {
            if !problems.iter().any(|p| p.starts_with(&format!("{field}:"))) {
                problems.extend(crate::config_check::amqp_url_problems(field, url));
            }
        }
        problems.extend(self.destinations.problems());
        problems.extend(self.admin.problems());
        if let Some(f) = &self.feedback {
            problems.extend(f.problems());
            if f.url.is_none() && self.rabbitmq.is_none() {
                problems.push(
                    "feedback.url: needed when there is no `rabbitmq` section to take the broker from"
                        .into(),
                );
            }
        }
        if self.ingest.max_events == 0 {
            problems.push("ingest.max_events: must be at least 1".into());
        }
        problems.extend(self.http.ingest.problems(self.http.max_body_bytes));
        if self.http.max_connections < crate::app::HTTP_WORKERS {
            problems.push(format!(
                "http.max_connections: must be at least {} (one per worker thread)",
                crate::app::HTTP_WORKERS
            ));
        }
        if self.http.listen.parse::<std::net::SocketAddr>().is_err() {
            problems.push(format!(
                "http.listen: `{}` is not host:port",
                self.http.listen
            ));
        }
        if !self.store.url.starts_with("sqlite:")
            && !self.store.url.starts_with("postgres://")
            && !self.store.url.starts_with("postgresql://")
        {
            problems.push(format!(
                "store.url: `{}` is neither sqlite:PATH nor postgres://…",
                crate::store::redact(&self.store.url)
            ));
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_loads() {
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../kiungo.example.yaml");
        let config = Config::load(&file).expect("example config");
        assert!(config.mappings.ends_with("mappings/packs"));
        assert!(config.rabbitmq.is_some());
    }

    /// The example's commented `destinations:` block (both destinations,
    /// reconciliation, completeness) is valid once uncommented.
    #[test]
    fn example_destinations_are_valid_when_uncommented() {
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../kiungo.example.yaml");
        let text = std::fs::read_to_string(&file).expect("example");
        let mut uncommented = String::new();
        let mut inside = false;
        for line in text.lines() {
            if line == "# destinations:" {
                inside = true;
            } else if inside && !line.starts_with('#') {
                inside = false;
            }
            let line = if inside {
                line.strip_prefix("# ").unwrap_or(line)
            } else {
                line
            };
            uncommented.push_str(line);
            uncommented.push('\n');
        }
        let config: Config =
            crate::yaml_problems::from_str_all(&uncommented, &file).expect("parses");
        assert!(config.problems().is_empty(), "{:?}", config.problems());
        let dhis2 = config.destinations.dhis2.expect("dhis2");
        assert!(config.destinations.fhir.is_some());
        assert!(dhis2.reconcile.is_some());
        assert_eq!(dhis2.completeness.len(), 1);
        assert_eq!(
            dhis2.completeness[0].grace,
            Duration::from_secs(2 * 24 * 3600)
        );
    }

    #[test]
    fn destinations_parse_and_secret_files_are_relative_to_the_config() {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("k.yaml");
        std::fs::write(
            &file,
            "destinations:\n  fhir:\n    server: {base_url: 'http://fhir.local/fhir'}\n  dhis2:\n    server:\n      base_url: 'http://dhis2.local'\n      auth: {type: basic, username: admin, password: {file: secrets/dhis2}}\n    retry: {base_delay: 2s, max_delay: 1m}\n    push_delay: 10s\n",
        )
        .expect("write");
        let config = Config::load(&file).expect("loads");
        let dhis2 = config.destinations.dhis2.expect("dhis2");
        assert_eq!(dhis2.push_delay, Duration::from_secs(10));
        assert_eq!(dhis2.retry.max_delay, Duration::from_secs(60));
        match dhis2.server.auth {
            kiungo_connectors::auth::AuthConfig::Basic { password, .. } => {
                assert_eq!(password.file, Some(dir.path().join("secrets/dhis2")));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(config.destinations.fhir.expect("fhir").concurrency, 32);

        std::fs::write(&file, "destinations:\n  fhir:\n    server: {base_url: 'http://x'}\n    retry: {base_delay: 1m, max_delay: 1s}\n").expect("write");
        let err = Config::load(&file).expect_err("bad retry").to_string();
        assert!(err.contains("destinations.fhir.retry.base_delay"), "{err}");
    }

    #[test]
    fn typos_and_bad_values_name_the_field() {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("k.yaml");
        std::fs::write(&file, "store:\n  ur1: sqlite:x\n").expect("write");
        let err = Config::load(&file).expect_err("typo").to_string();
        assert!(err.contains("ur1"), "{err}");
        std::fs::write(
            &file,
            "http:\n  listen: nowhere\ningest:\n  max_events: 0\n",
        )
        .expect("write");
        let err = Config::load(&file).expect_err("bad values").to_string();
        assert!(
            err.contains("http.listen") && err.contains("ingest.max_events"),
            "{err}"
        );
    }
}
