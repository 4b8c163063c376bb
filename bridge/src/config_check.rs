//! `kiungo config check`: loads a config file the way `kiungo run` does
//! (environment overrides included) and reports every problem at once,
//! each with its place: the YAML line and column, the field
//! (`destinations.dhis2.retry.base_delay`), the mapping file and line, or
//! the secret that cannot be read. Nothing is started or connected, but
//! with `--online`: then DHIS2 is asked what the static preflight asks
//! ([`crate::delivery::static_preflight`]), and each of its problems is
//! one more, with its mapping file and line.

use std::path::Path;
use std::process::ExitCode;

use kiungo_connectors::dhis2::Dhis2Client;
use kiungo_connectors::fhir::FhirClient;
use kiungo_mappings::{LoadOptions, MappingSet};

use crate::config::{Config, ConfigError};

/// Every problem of the config at `file`, and a summary when there are
/// none; `online` also runs the static DHIS2 preflight.
pub fn problems(file: &Path, online: bool) -> Result<String, Vec<String>> {
    crate::tls::install_crypto_provider();
    let config = match Config::load_unchecked(file) {
        Ok(c) => c,
        // A parse error's snippet has its secrets masked where it is made
        // (`Config::load_unchecked`, with [`mask_secrets`]).
        Err(e @ ConfigError::Read { .. }) => return Err(vec![e.to_string()]),
        Err(ConfigError::Parse { problems, .. }) => return Err(problems),
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
    let set = match MappingSet::load_dir(
        &config.mappings,
        LoadOptions {
            pseudonym_key: key,
            calendar: config.dhis2_calendar(),
            ..LoadOptions::default()
        },
    ) {
        Ok(set) => Some(set),
        Err(errors) => {
            problems.extend(errors.0.iter().map(ToString::to_string));
            None
        }
    };
    let mappings = set.as_ref().map_or(0, |s| s.mappings().len());
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
    // A PostgreSQL database that does not exist is created when the role
    // may, else the problem says what to run.
    let mut created = String::new();
    if problems.is_empty() {
        use crate::store::database::{DatabaseCheck, ensure_postgres_database};
        let check = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map(|rt| rt.block_on(ensure_postgres_database(&config.store.url)));
        match check {
            Ok(DatabaseCheck::Created(m)) => created = format!("; {m}"),
            Ok(DatabaseCheck::Missing(m)) => problems.push(at(m)),
            Ok(DatabaseCheck::Nothing) | Err(_) => {}
        }
    }
    let mut dhis2_online = String::new();
    if online && problems.is_empty() {
        match (&config.destinations.dhis2, &set) {
            (None, _) => {
                dhis2_online = "; --online: no destinations.dhis2, nothing asked".into();
            }
            (Some(d), Some(set)) => match online_problems(d, set) {
                Ok(summary) => dhis2_online = summary,
                Err(more) => problems.extend(more),
            },
            (Some(_), None) => {}
        }
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
        "{}: ok — {mappings} mappings from {}; store {}{created}; {}; destinations: {}; {} admin tokens; feedback: {}{dhis2_online}",
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

/// The static DHIS2 preflight against `destinations.dhis2`: a summary, or
/// every problem (DHIS2 not answering is one).
fn online_problems(
    d: &crate::delivery::config::Dhis2DestinationConfig,
    set: &MappingSet,
) -> Result<String, Vec<String>> {
    let client = Dhis2Client::new(d.server.clone())
        .map_err(|e| vec![format!("destinations.dhis2.server: {e}")])?;
    let rules = set.static_dhis2_rules();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| vec![format!("--online: cannot start: {e}")])?;
    let report = runtime
        .block_on(crate::delivery::static_preflight::run(
            &client,
            &rules,
            d.calendar,
            &d.completeness,
        ))
        .map_err(|e| {
            vec![format!(
                "destinations.dhis2: {}",
                crate::delivery::sinks::redact(&e.to_string())
            )]
        })?;
    let (warnings, errors): (Vec<_>, Vec<_>) = report
        .problems
        .iter()
        .partition(|p| p.severity == crate::delivery::static_preflight::Severity::Warning);
    if !errors.is_empty() {
        return Err(report.problems.iter().map(ToString::to_string).collect());
    }
    Ok(format!(
        "; dhis2 {} (calendar {}): {} references of {} rules check out{}{}",
        report.version.as_deref().unwrap_or("(version unknown)"),
        report.calendar.as_deref().unwrap_or("unknown"),
        report.references,
        report.rules,
        match report.computed_fields {
            0 => String::new(),
            n => format!(" ({n} fields computed from events, checked at delivery)"),
        },
        warnings
            .iter()
            .map(|w| format!("\n{w}"))
            .collect::<String>()
    ))
}

/// `text` (a parser's message quoting the lines around a problem) with
/// secrets masked: the password of a URL's userinfo
/// (`amqp://kiungo:****@rabbit`) and the value of any key whose name holds
/// `password`, `token` or `secret` (`password: ****`; a `{env: …}` or
/// `{file: …}` reference is shown, it is not a secret).
pub fn mask_secrets(text: &str) -> String {
    text.lines()
        .map(|line| mask_keys(&mask_userinfo(line)))
        .collect::<Vec<_>>()
        .join("\n")
}

const MASK: &str = "****";

/// `scheme://user:password@host` → `scheme://user:****@host`.
fn mask_userinfo(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c == '/' || c.is_whitespace() || matches!(c, '\'' | '"' | ',' | '}'))
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(a) => {
                let userinfo = &authority[..a];
                match userinfo.find(':') {
                    Some(colon) => {
                        out.push_str(&userinfo[..=colon]);
                        out.push_str(MASK);
                    }
                    None => out.push_str(userinfo),
                }
                out.push_str(&authority[a..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// `password: hunter2` → `password: ****`, also inside flow mappings.
fn mask_keys(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut i = 0;
    let bytes = line.as_bytes();
    while i < line.len() {
        let Some(colon) = line[i..].find(':').map(|c| c + i) else {
            out.push_str(&line[i..]);
            break;
        };
        let key_start = line[..colon]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
            .map_or(0, |p| p + 1)
            .max(i);
        let key = line[key_start..colon].to_ascii_lowercase();
        let secret = ["password", "passwd", "token", "secret"]
            .iter()
            .any(|k| key.contains(k));
        out.push_str(&line[i..=colon]);
        i = colon + 1;
        // A YAML key is followed by a space (or the end of the line).
        if !secret || bytes.get(i).is_some_and(|b| *b != b' ') {
            continue;
        }
        let value_start = i + line[i..].len() - line[i..].trim_start().len();
        if line[value_start..].starts_with('{') || value_start == line.len() {
            continue;
        }
        let value_end = line[value_start..]
            .find([',', '}'])
            .map_or(line.len(), |e| e + value_start);
        out.push_str(&line[i..value_start]);
        out.push_str(MASK);
        i = value_end;
    }
    out
}

/// Problems with an AMQP URL that cannot work: a scheme other than
/// `amqp`/`amqps`, no host, or text the client library cannot parse.
/// Each names `field`; the URL is shown without its password.
pub fn amqp_url_problems(field: &str, url: &str) -> Vec<String> {
    let shown = mask_userinfo(url);
    let Some((scheme, rest)) = url.split_once("://") else {
        return vec![format!(
            "{field}: `{shown}` is not a URL (expected amqp://… or amqps://…)"
        )];
    };
    if !matches!(scheme, "amqp" | "amqps") {
        return vec![format!("{field}: scheme `{scheme}` is not amqp or amqps")];
    }
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host_port.split(':').next().unwrap_or_default(),
    };
    if host.is_empty() {
        return vec![format!("{field}: `{shown}` names no host")];
    }
    match url.parse::<lapin::uri::AMQPUri>() {
        Ok(_) => Vec::new(),
        Err(e) => vec![format!(
            "{field}: `{shown}` cannot be parsed: {}",
            mask_userinfo(&e)
        )],
    }
}

/// The command: exit 0 when the config is usable, 1 with every problem.
pub fn run(file: &Path, online: bool) -> ExitCode {
    match problems(file, online) {
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
        let problems = problems(&file, false).expect_err("problems");
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
        let summary = super::problems(&example, false).expect("the example config is valid");
        assert!(summary.contains("mappings"), "{summary}");
    }

    #[test]
    fn every_yaml_problem_is_reported_naming_the_file_and_field() {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("k.yaml");
        std::fs::write(
            &file,
            "mappings: mappings\nstore:\n  url: sqlite:k.db\n  bogus: 1\n\
             rabbitmq:\n  prefetch: 70000\n  url: amqp://h/%2f\nhttp:\n  lisen: x\n",
        )
        .expect("config");
        let problems = problems(&file, false).expect_err("problems");
        assert_eq!(problems.len(), 4, "{problems:#?}");
        let name = file.display().to_string();
        assert!(
            problems[0].starts_with(&format!("{name}:4:3: unknown field `bogus`")),
            "{}",
            problems[0]
        );
        assert!(
            problems[1].starts_with(&format!(
                "{name}:6:13: `prefetch`: expected a whole number from 0 to 65535"
            )),
            "{}",
            problems[1]
        );
        assert!(
            problems[3].starts_with(&format!("{name}:9:3: unknown field `lisen`")),
            "{}",
            problems[3]
        );
        assert!(
            problems[2].contains("missing field `queues`"),
            "{}",
            problems[2]
        );
        for p in &problems {
            assert!(p.contains(&format!("--> {name}:")), "{p}");
            assert!(!p.contains("<input>") && !p.contains("error:"), "{p}");
        }
    }

    #[test]
    fn secrets_in_yaml_snippets_are_masked() {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("k.yaml");
        std::fs::write(
            &file,
            "mappings: mappings\nrabbitmq:\n  url: amqp://kiungo:S3cretPassw0rd@rabbit:5672/%2f\n\
             \x20 prefetch: [oops\n  queues: []\n\
             destinations: {dhis2: {server: {auth: {type: basic, password: hunter2, token: {env: T}}}}}\n",
        )
        .expect("config");
        let problems = problems(&file, false).expect_err("a YAML error");
        let all = problems.join("\n");
        assert!(all.contains("k.yaml:4:"), "the place is kept: {all}");
        assert!(!all.contains("S3cretPassw0rd"), "{all}");
        assert!(all.contains("amqp://kiungo:****@rabbit:5672"), "{all}");
        assert_eq!(
            mask_secrets(
                "x: {type: basic, password: hunter2, api_token: d2pat_abc}\n  client_secret: s"
            ),
            "x: {type: basic, password: ****, api_token: ****}\n  client_secret: ****"
        );
        assert_eq!(
            mask_secrets("6 |   token: {env: KIUNGO_TOKEN}"),
            "6 |   token: {env: KIUNGO_TOKEN}"
        );
        assert_eq!(
            mask_secrets("unknown field `token`, expected one of url"),
            "unknown field `token`, expected one of url"
        );
    }

    #[test]
    fn amqp_urls_that_cannot_work_are_problems_naming_the_field() {
        for (url, why) in [
            ("http://rabbit:5672/", "scheme `http`"),
            ("amqp://", "names no host"),
            ("amqp://kiungo:pw@:5672/%2f", "names no host"),
            ("amqp://rabbit:notaport/%2f", "cannot be parsed"),
            ("rabbit:5672", "is not a URL"),
        ] {
            let p = amqp_url_problems("rabbitmq.url", url);
            assert!(
                p.len() == 1 && p[0].starts_with("rabbitmq.url: ") && p[0].contains(why),
                "{url}: {p:?}"
            );
            assert!(!p[0].contains(":pw@"), "{p:?}");
        }
        for url in [
            "amqp://127.0.0.1:5672/%2f",
            "amqps://u:p@rabbit.example/vhost",
            "amqp://[::1]:5672",
        ] {
            assert_eq!(
                amqp_url_problems("rabbitmq.url", url),
                Vec::<String>::new(),
                "{url}"
            );
        }
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("k.yaml");
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../mappings/packs");
        std::fs::write(
            &file,
            format!(
                "mappings: {}\nrabbitmq:\n  url: 'amqp://:5672'\n  queues: [{{name: q, source: cht}}]\n",
                example.display()
            ),
        )
        .expect("config");
        let all = problems(&file, false).expect_err("no host").join("\n");
        assert!(
            all.contains("rabbitmq.url: `amqp://:5672` names no host"),
            "{all}"
        );
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
