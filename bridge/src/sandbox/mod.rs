//! Local simulators of DHIS2 (2.40) and a FHIR R4 server, for quickstarts,
//! demos and end-to-end tests.
//!
//! [`Sandbox::start`] binds both (port 0 works) on the tokio runtime and
//! returns their base URLs and a handle to stop them; `kiungo sandbox`
//! runs them until Ctrl-C. Both keep their data in memory only.
//!
//! Guarantees: each simulator answers as the contract notes
//! (`dhis2-contract.md`, `fhir-contract.md`) describe; an injected fault
//! ([`Faults`]) is decided before any state changes, so a faulted request
//! changes nothing; a FHIR transaction is all or nothing.
//!
//! Sandbox-only endpoints (never faulted, never authenticated), on both
//! servers: `GET /sandbox/faults`, `POST /sandbox/faults` (a [`Faults`]
//! JSON document replacing the current faults; `{}` clears them) and
//! `POST /sandbox/reset` (forget all data); on DHIS2 `GET /sandbox/values`
//! (every stored data value), on FHIR `GET /sandbox/resources` (counts per
//! type and every resource) and `GET /sandbox/overlaps` (whether two
//! requests ever carried the same bundle or resource at once: what the
//! scale-out test asserts is zero).

mod dhis2;
mod faults;
mod fhir;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_calendar;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{App, HttpResponse, HttpServer, web};
use serde::{Deserialize, Serialize};

pub use dhis2::{
    BASIC_USER, DEFAULT_COC, DEFAULT_METADATA, Metadata, MetadataError, SystemCalendar,
    UnknownSystemCalendar, normalize_period, valid_pat,
};
pub use faults::{Fault, FaultControl, Faults, FaultsError, Outage};
pub use fhir::operation_outcome;

/// Largest request body either simulator reads.
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// Both simulators' settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxConfig {
    /// The DHIS2 simulator.
    pub dhis2: Dhis2Config,
    /// The FHIR simulator.
    pub fhir: FhirConfig,
    /// HTTP worker threads per simulator (default 1).
    pub workers: usize,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            dhis2: Dhis2Config::default(),
            fhir: FhirConfig::default(),
            workers: 1,
        }
    }
}

impl SandboxConfig {
    /// Both simulators on `127.0.0.1:0`, no faults, no FHIR token.
    pub fn for_test() -> Self {
        let mut c = Self::default();
        c.dhis2.listen = "127.0.0.1:0".into();
        c.fhir.listen = "127.0.0.1:0".into();
        c
    }
}

/// The DHIS2 simulator's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Dhis2Config {
    /// Address to bind (default `127.0.0.1:8081`; port 0 picks one).
    pub listen: String,
    /// Metadata document (the shape of `bridge/sandbox/dhis2-metadata.json`,
    /// which is embedded and used when this is absent).
    pub metadata: Option<PathBuf>,
    /// The system calendar (default `iso8601`): reported by
    /// `/api/system/info`, and the only periods the simulator accepts.
    pub calendar: SystemCalendar,
    /// Faults to inject from the start.
    pub faults: Faults,
}

impl Default for Dhis2Config {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8081".into(),
            metadata: None,
            calendar: SystemCalendar::default(),
            faults: Faults::default(),
        }
    }
}

/// The FHIR simulator's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FhirConfig {
    /// Address to bind (default `127.0.0.1:8082`; port 0 picks one).
    pub listen: String,
    /// When set, every non-sandbox request needs `Authorization: Bearer
    /// <token>` (401 OperationOutcome otherwise).
    pub bearer_token: Option<String>,
    /// Faults to inject from the start.
    pub faults: Faults,
}

impl Default for FhirConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8082".into(),
            bearer_token: None,
            faults: Faults::default(),
        }
    }
}

/// Why the sandbox could not start.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The metadata file cannot be read.
    #[error("dhis2 metadata {path}: {error}")]
    MetadataFile {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// The metadata cannot be used.
    #[error("dhis2 {0}")]
    Metadata(#[from] MetadataError),
    /// The faults are invalid.
    #[error("faults: {0}")]
    Faults(#[from] FaultsError),
    /// An address cannot be bound.
    #[error("{name} listen {addr}: {error}")]
    Bind {
        /// `dhis2` or `fhir`.
        name: &'static str,
        /// The address.
        addr: String,
        /// Why.
        error: std::io::Error,
    },
}

/// Running simulators.
#[derive(Debug)]
pub struct Sandbox {
    dhis2_addr: SocketAddr,
    fhir_addr: SocketAddr,
    dhis2: Arc<dhis2::Dhis2State>,
    fhir: Arc<fhir::FhirState>,
    handle: SandboxHandle,
}

/// Stops the simulators; cheap to clone.
#[derive(Clone)]
pub struct SandboxHandle {
    servers: Vec<actix_web::dev::ServerHandle>,
}

impl std::fmt::Debug for SandboxHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxHandle")
            .field("servers", &self.servers.len())
            .finish()
    }
}

impl SandboxHandle {
    /// Stops both servers (in-flight requests finish first).
    pub async fn stop(&self) {
        for s in &self.servers {
            s.stop(true).await;
        }
    }
}

/// Binds one simulator's server and spawns it; evaluates to its bound
/// address and handle.
macro_rules! bind {
    ($name:expr, $addr:expr, $workers:expr, $factory:expr) => {{
        let addr: &str = $addr;
        let bind_error = |error| SandboxError::Bind {
            name: $name,
            addr: addr.to_owned(),
            error,
        };
        match HttpServer::new($factory)
            .workers($workers.max(1))
            .disable_signals()
            .shutdown_timeout(1)
            .bind(addr)
        {
            Err(e) => Err(bind_error(e)),
            Ok(server) => match server.addrs().first().copied() {
                None => Err(bind_error(std::io::Error::other("no address bound"))),
                Some(bound) => {
                    let server = server.run();
                    let handle = server.handle();
                    tokio::spawn(server);
                    Ok((bound, handle))
                }
            },
        }
    }};
}

impl Sandbox {
    /// Loads the metadata, binds both simulators and starts serving on the
    /// current tokio runtime; returns once both ports are bound.
    pub async fn start(config: SandboxConfig) -> Result<Self, SandboxError> {
        let metadata = match &config.dhis2.metadata {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|error| SandboxError::MetadataFile {
                        path: path.clone(),
                        error,
                    })?;
                Metadata::parse(&text)?
            }
            None => Metadata::default_subset()?,
        };
        let dhis2 = Arc::new(dhis2::Dhis2State::new(
            metadata,
            config.dhis2.calendar,
            FaultControl::new(config.dhis2.faults.clone())?,
        ));
        let fhir = Arc::new(fhir::FhirState::new(
            config.fhir.bearer_token.clone(),
            FaultControl::new(config.fhir.faults.clone())?,
        ));
        let data = dhis2::data(&dhis2);
        let (dhis2_addr, dhis2_server) =
            bind!("dhis2", &config.dhis2.listen, config.workers, move || {
                App::new()
                    .app_data(data.clone())
                    .app_data(web::PayloadConfig::new(MAX_BODY_BYTES))
                    .configure(dhis2::configure)
            })?;
        let data = fhir::data(&fhir);
        let fhir_bound: Result<_, SandboxError> =
            bind!("fhir", &config.fhir.listen, config.workers, move || {
                App::new()
                    .app_data(data.clone())
                    .app_data(web::PayloadConfig::new(MAX_BODY_BYTES))
                    .configure(fhir::configure)
            });
        let (fhir_addr, fhir_server) = match fhir_bound {
            Ok(b) => b,
            Err(e) => {
                dhis2_server.stop(false).await;
                return Err(e);
            }
        };
        tracing::info!(%dhis2_addr, %fhir_addr, "sandbox listening");
        Ok(Self {
            dhis2_addr,
            fhir_addr,
            dhis2,
            fhir,
            handle: SandboxHandle {
                servers: vec![dhis2_server, fhir_server],
            },
        })
    }

    /// The DHIS2 simulator's address.
    pub const fn dhis2_addr(&self) -> SocketAddr {
        self.dhis2_addr
    }

    /// The FHIR simulator's address.
    pub const fn fhir_addr(&self) -> SocketAddr {
        self.fhir_addr
    }

    /// The DHIS2 base URL (`http://127.0.0.1:PORT`; the API is under `/api`).
    pub fn dhis2_url(&self) -> String {
        format!("http://{}", self.dhis2_addr)
    }

    /// The FHIR base URL (`http://127.0.0.1:PORT`; transactions POST here).
    pub fn fhir_url(&self) -> String {
        format!("http://{}", self.fhir_addr)
    }

    /// The DHIS2 simulator's faults, changeable at runtime.
    pub fn dhis2_faults(&self) -> &FaultControl {
        &self.dhis2.faults
    }

    /// The FHIR simulator's faults, changeable at runtime.
    pub fn fhir_faults(&self) -> &FaultControl {
        &self.fhir.faults
    }

    /// What Kiungo sent to the DHIS2 simulator's `dataValueSets`
    /// (requests, bytes, values, sends per key).
    pub fn dhis2_traffic(&self) -> serde_json::Value {
        self.dhis2.traffic_json()
    }

    /// What Kiungo sent to the FHIR simulator: transactions, gzipped ones,
    /// bytes on the wire and inflated, TCP connections opened.
    pub fn fhir_traffic(&self) -> serde_json::Value {
        self.fhir.traffic_json()
    }

    /// Every stored DHIS2 data value (what `GET /sandbox/values` answers).
    pub fn dhis2_values(&self) -> serde_json::Value {
        self.dhis2.values_json()
    }

    /// FHIR counts per type and every resource (what `GET
    /// /sandbox/resources` answers).
    pub fn fhir_resources(&self) -> serde_json::Value {
        self.fhir.resources_json()
    }

    /// A handle that stops both servers.
    pub fn handle(&self) -> SandboxHandle {
        self.handle.clone()
    }

    /// Stops both servers.
    pub async fn stop(self) {
        self.handle.stop().await;
    }
}

/// Splits a query string into decoded pairs (`+` is a space, `%XX`
/// decoded), keeping repeated keys.
pub(crate) fn query_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `POST /sandbox/faults` on either simulator.
fn set_faults(control: &FaultControl, body: &[u8]) -> HttpResponse {
    let faults: Faults = match serde_json::from_slice(body) {
        Ok(f) => f,
        Err(e) => {
            return HttpResponse::BadRequest().json(serde_json::json!({"error": e.to_string()}));
        }
    };
    match control.set(faults) {
        Ok(()) => HttpResponse::Ok().json(control.get()),
        Err(e) => HttpResponse::BadRequest().json(serde_json::json!({"error": e.to_string()})),
    }
}

/// `kiungo sandbox`: both simulators until Ctrl-C.
#[derive(Debug, Clone, clap::Args)]
pub struct SandboxArgs {
    /// Address of the DHIS2 simulator.
    #[arg(long, default_value = "127.0.0.1:8081")]
    pub dhis2: String,
    /// Address of the FHIR simulator.
    #[arg(long, default_value = "127.0.0.1:8082")]
    pub fhir: String,
    /// DHIS2 metadata file (default: the embedded Sierra Leone subset).
    #[arg(long)]
    pub metadata: Option<PathBuf>,
    /// The DHIS2 simulator's system calendar: iso8601, gregorian,
    /// ethiopian or nepali. Period ids that do not exist in it are refused.
    #[arg(long, default_value = "iso8601")]
    pub calendar: SystemCalendar,
    /// Share of requests (0..1) answered 503 or 500, on both simulators.
    #[arg(long, default_value_t = 0.0)]
    pub error_rate: f64,
    /// Share of requests (0..1) answered 429 with Retry-After.
    #[arg(long, default_value_t = 0.0)]
    pub throttle_rate: f64,
    /// Delay before every answer, e.g. `50ms`.
    #[arg(long, value_parser = parse_duration)]
    pub latency: Option<Duration>,
    /// Bearer token the FHIR simulator requires (none by default).
    #[arg(long)]
    pub fhir_token: Option<String>,
    /// Seed of the fault PRNG.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime_serde::re::humantime::parse_duration(s).map_err(|e| e.to_string())
}

/// Runs `kiungo sandbox` until Ctrl-C.
pub fn run_cli(args: SandboxArgs) -> ExitCode {
    crate::run::init_logging();
    let faults = Faults {
        error_rate: args.error_rate,
        throttle_rate: args.throttle_rate,
        latency: args.latency.unwrap_or_default(),
        seed: args.seed,
        ..Faults::default()
    };
    let config = SandboxConfig {
        dhis2: Dhis2Config {
            listen: args.dhis2,
            metadata: args.metadata,
            calendar: args.calendar,
            faults: faults.clone(),
        },
        fhir: FhirConfig {
            listen: args.fhir,
            bearer_token: args.fhir_token,
            faults,
        },
        workers: 2,
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
        let sandbox = match Sandbox::start(config).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        };
        println!("DHIS2 sandbox: {}/api  (calendar {}; Basic admin:district, or any valid d2pat_ token)", sandbox.dhis2_url(), args.calendar);
        println!("FHIR sandbox:  {}  (R4 transactions POST to the base)", sandbox.fhir_url());
        println!("Inspect: {0}/sandbox/values  {1}/sandbox/resources; faults: POST {{..}}/sandbox/faults. Ctrl-C stops.", sandbox.dhis2_url(), sandbox.fhir_url());
        let _ = tokio::signal::ctrl_c().await;
        sandbox.stop().await;
        ExitCode::SUCCESS
    })
}
