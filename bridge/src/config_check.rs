//! `kiungo config check`: loads a config file the way `kiungo run` does
//! (environment overrides included) and reports every problem at once,
//! each with its place: the YAML line and column, the field
//! (`destinations.dhis2.retry.base_delay`), the mapping file and line, or
//! the secret that cannot be read. Nothing is started or connected.

use std::path::Path;
use std::process::ExitCode;

use kiungo_connectors::dhis2::Dhis2Client;
use kiungo_connectors::fhir::FhirClient;
use kiungo_mappings::{LoadOptions, MappingSet};

use crate::config::{Config, ConfigError};

/// Every problem of the config at `file`, and a summary when there are
/// none.
pub fn problems(file: &Path) -> Result<String, Vec<String>> {
    crate::tls::install_crypto_provider();
    let config = match Config::load_unchecked(file) {
        Ok(c) => c,
        Err(e @ (ConfigError::Read { .. } | ConfigError::Parse { .. })) => {
            return Err(vec![e.to_string()]);
        }
        Err(ConfigError::Invalid { problems, .. }) => return Err(problems),
    };
    let at = |p: String| format!("{}: {p}", file.display());
    let mut problems: Vec<String> = config.problems().into_iter().map(at).collect();
    let key = match config.pseudonym_key() {
        Ok(k) => k,
        Err(e) => {
            problems.push(at(e));
            None
        }
    };
    let mappings = match MappingSet::load_dir(
        &config.mappings,
        LoadOptions {
            pseudonym_key: key,
            ..LoadOptions::default()
        },
    ) {
        Ok(set) => set.mappings().len(),
        Err(errors) => {
            problems.extend(errors.0.iter().map(ToString::to_string));
            0
        }
    };
    // Building the clients reads their secrets and checks URLs and token
    // formats.
    if let Some(f) = &config.destinations.fhir
        && let Err(e) = FhirClient::new(f.server.clone())
    {
        problems.push(at(format!("destinations.fhir.server: {e}")));
    }
    if let Some(d) = &config.destinations.dhis2
        && let Err(e) = Dhis2Client::new(d.server.clone())
    {
        problems.push(at(format!("destinations.dhis2.server: {e}")));
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let destinations: Vec<&str> = [
        config.destinations.fhir.as_ref().map(|_| "fhir"),
        config.destinations.dhis2.as_ref().map(|_| "dhis2"),
    ]
    .into_iter()
    .flatten()
    .collect();
    Ok(format!(
        "{}: ok — {mappings} mappings from {}; store {}; {}; destinations: {}; {} admin tokens; feedback: {}",
        file.display(),
        config.mappings.display(),
        crate::store::redact(&config.store.url),
        config.rabbitmq.as_ref().map_or_else(
            || "no rabbitmq (HTTP ingest only)".to_owned(),
            |r| format!("rabbitmq: {} queues", r.queues.len())
        ),
        if destinations.is_empty() {
            "none (outputs wait in the store)".to_owned()
        } else {
            destinations.join(", ")
        },
        config.admin.tokens.len(),
        config
            .feedback
            .as_ref()
            .map_or("off", |f| f.exchange.as_str()),
    ))
}

/// The command: exit 0 when the config is usable, 1 with every problem.
pub fn run(file: &Path) -> ExitCode {
    match problems(file) {
        Ok(summary) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err(problems) => {
            for p in &problems {
                eprintln!("error: {p}");
            }
            eprintln!("{} problem(s)", problems.len());
            ExitCode::from(1)
        }
    }
}

/// `kiungo admin token`: a new random token and the config lines that
/// admit it (only the hash goes into the config).
pub fn new_token(name: &str, role: crate::admin::Role) -> String {
    let random: String = (0..2)
        .flat_map(|_| *uuid::Uuid::new_v4().as_bytes())
        .map(|b| format!("{b:02x}"))
        .collect();
    let token = format!("kiungo_{random}");
    format!(
        "token (give it to {name}; it is not stored anywhere):\n  {token}\n\nconfig:\nadmin:\n  tokens:\n    - name: {name}\n      role: {}\n      sha256: {}\n",
        role.as_str(),
        crate::admin::token_hash_hex(&token)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_is_reported_with_its_place() {
        let dir = tempfile::tempdir().expect("dir");
        let mappings = dir.path().join("mappings");
        std::fs::create_dir(&mappings).expect("mkdir");
        std::fs::write(mappings.join("bad.yaml"), "id: x\nversion: one\n").expect("mapping");
        let file = dir.path().join("k.yaml");
        std::fs::write(
            &file,
            "mappings: mappings\nstore: {url: 'mysql://x'}\nhttp: {listen: nowhere}\n\
             admin:\n  tokens:\n    - {name: a, role: operator, sha256: abc}\n\
             feedback: {exchange: ''}\n",
        )
        .expect("config");
        let problems = problems(&file).expect_err("problems");
        let all = problems.join("\n");
        for needle in [
            "admin.tokens[0].sha256",
            "feedback.exchange",
            "feedback.url",
            "http.listen",
            "store.url",
            "bad.yaml",
        ] {
            assert!(all.contains(needle), "{needle} missing from:\n{all}");
        }
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../kiungo.example.yaml");
        let summary = super::problems(&example).expect("the example config is valid");
        assert!(summary.contains("mappings"), "{summary}");
    }

    #[test]
    fn new_tokens_hash_to_the_printed_sha256() {
        let out = new_token("alice", crate::admin::Role::Viewer);
        let token = out.lines().nth(1).map(str::trim).expect("token line");
        assert!(token.starts_with("kiungo_") && token.len() == 71, "{token}");
        assert!(out.contains(&crate::admin::token_hash_hex(token)));
        assert!(out.contains("role: viewer"));
    }
}
