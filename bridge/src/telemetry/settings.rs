//! Whether and where spans are exported, from the OpenTelemetry
//! environment variables (read once, at start-up, into [`OtlpSettings`],
//! which tests build directly instead of setting variables).
//!
//! Export is on only when an endpoint is set: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`
//! (used as it is) or `OTEL_EXPORTER_OTLP_ENDPOINT` (with `/v1/traces`
//! appended), as the OpenTelemetry specification reads them;
//! `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none` turns it off
//! whatever the endpoint. Only OTLP over HTTP with protobuf bodies is
//! spoken: a `grpc` or `http/json` protocol is refused at start-up rather
//! than silently sent something the collector does not expect.

/// The default service name (`OTEL_SERVICE_NAME`).
pub const DEFAULT_SERVICE_NAME: &str = "kiungo";

/// Where and as what spans go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpSettings {
    /// The full URL spans are posted to (`…/v1/traces`).
    pub traces_endpoint: String,
    /// The `service.name` resource attribute.
    pub service_name: String,
}

/// An OpenTelemetry variable that cannot be followed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{variable}{}: {problem}", shown(.value))]
pub struct SettingsError {
    /// The variable.
    pub variable: &'static str,
    /// Its value, unless it is a URL (which may hold a credential).
    pub value: Option<String>,
    /// What is wrong with it.
    pub problem: &'static str,
}

impl OtlpSettings {
    /// Export to `base` (an `OTEL_EXPORTER_OTLP_ENDPOINT`, `/v1/traces`
    /// appended) as the default service: for tests.
    pub fn for_endpoint(base: &str) -> Self {
        Self {
            traces_endpoint: with_traces_path(base),
            service_name: DEFAULT_SERVICE_NAME.to_owned(),
        }
    }

    /// The settings of this process's environment: `Ok(None)` when no
    /// endpoint is set (export off).
    pub fn from_env() -> Result<Option<Self>, SettingsError> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// The settings `var` gives (a variable's value, `None` when unset).
    /// Empty values count as unset, as the specification says.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, SettingsError> {
        let var = |name: &str| {
            var(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        if let Some(exporter) = var("OTEL_TRACES_EXPORTER") {
            match exporter.as_str() {
                "none" => return Ok(None),
                "otlp" => {}
                _ => {
                    return Err(SettingsError {
                        variable: "OTEL_TRACES_EXPORTER",
                        value: Some(exporter),
                        problem: "only `otlp` (or `none`) is supported",
                    });
                }
            }
        }
        for variable in [
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ] {
            if let Some(protocol) = var(variable) {
                if protocol != "http/protobuf" {
                    return Err(SettingsError {
                        variable,
                        value: Some(protocol),
                        problem: "only `http/protobuf` is supported (OTLP over HTTP; a collector takes it on port 4318)",
                    });
                }
                break;
            }
        }
        let (variable, traces_endpoint) = match (
            var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
            var("OTEL_EXPORTER_OTLP_ENDPOINT"),
        ) {
            (Some(url), _) => ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", url),
            (None, Some(base)) => ("OTEL_EXPORTER_OTLP_ENDPOINT", with_traces_path(&base)),
            (None, None) => return Ok(None),
        };
        if !is_http_url(&traces_endpoint) {
            return Err(SettingsError {
                variable,
                value: None,
                problem: "not an http:// or https:// URL",
            });
        }
        Ok(Some(Self {
            traces_endpoint,
            service_name: var("OTEL_SERVICE_NAME")
                .unwrap_or_else(|| DEFAULT_SERVICE_NAME.to_owned()),
        }))
    }
}

fn shown(value: &Option<String>) -> String {
    value
        .as_ref()
        .map_or_else(String::new, |v| format!("={v:?}"))
}

/// `base` with the traces path: `http://c:4318` and `http://c:4318/`
/// become `http://c:4318/v1/traces`, `http://c/otlp` `http://c/otlp/v1/traces`.
fn with_traces_path(base: &str) -> String {
    format!("{}/v1/traces", base.trim_end_matches('/'))
}

/// An `http://` or `https://` URL with a host, and no whitespace or
/// control characters (the exporter parses it fully).
fn is_http_url(url: &str) -> bool {
    let Some((scheme, rest)) = url.split_once("://") else {
        return false;
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    ["http", "https"]
        .iter()
        .any(|s| scheme.eq_ignore_ascii_case(s))
        && !host.is_empty()
        && !url.chars().any(|c| c.is_whitespace() || c.is_control())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(vars: &[(&str, &str)]) -> Result<Option<OtlpSettings>, SettingsError> {
        OtlpSettings::from_vars(|name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        })
    }

    #[test]
    fn off_without_an_endpoint() {
        assert_eq!(from(&[]), Ok(None));
        assert_eq!(
            from(&[
                ("OTEL_SERVICE_NAME", "x"),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", " ")
            ]),
            Ok(None)
        );
    }

    #[test]
    fn the_general_endpoint_gets_the_traces_path_the_signal_one_does_not() {
        let s = from(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")])
            .expect("valid")
            .expect("on");
        assert_eq!(s.traces_endpoint, "http://collector:4318/v1/traces");
        assert_eq!(s.service_name, "kiungo");
        let s = from(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "https://apm.example/ingest/traces",
            ),
            ("OTEL_SERVICE_NAME", "kiungo-nairobi"),
        ])
        .expect("valid")
        .expect("on");
        assert_eq!(s.traces_endpoint, "https://apm.example/ingest/traces");
        assert_eq!(s.service_name, "kiungo-nairobi");
    }

    #[test]
    fn disabled_or_none_wins_over_an_endpoint() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318");
        assert_eq!(from(&[endpoint, ("OTEL_SDK_DISABLED", "TRUE")]), Ok(None));
        assert_eq!(
            from(&[endpoint, ("OTEL_TRACES_EXPORTER", "none")]),
            Ok(None)
        );
        assert!(matches!(
            from(&[endpoint, ("OTEL_SDK_DISABLED", "false")]),
            Ok(Some(_))
        ));
    }

    #[test]
    fn what_cannot_be_spoken_is_refused_naming_the_variable() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318");
        let e = from(&[endpoint, ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]).expect_err("grpc");
        assert_eq!(e.variable, "OTEL_EXPORTER_OTLP_PROTOCOL");
        assert!(e.to_string().contains("http/protobuf"), "{e}");
        // The signal's own protocol wins over the general one.
        assert!(matches!(
            from(&[
                endpoint,
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
            ]),
            Ok(Some(_))
        ));
        let e = from(&[endpoint, ("OTEL_TRACES_EXPORTER", "zipkin")]).expect_err("zipkin");
        assert_eq!(e.variable, "OTEL_TRACES_EXPORTER");
        for bad in ["collector:4318", "http://", "http://c ollector", "ftp://c"] {
            let e = from(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", bad)]).expect_err(bad);
            assert_eq!(e.variable, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "{bad}");
        }
    }
}
