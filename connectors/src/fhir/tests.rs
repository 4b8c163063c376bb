//! The FHIR client against a mock server.

use std::time::Duration;

use wiremock::matchers::{basic_auth, bearer_token, body_string, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use super::*;
use crate::auth::{AuthConfig, AuthError, secret_file};
use crate::http::{GzippedBody, MIN_COMPRESSED_BODY, gunzip};
use crate::retry::Retryable;

const BUNDLE: &str = include_str!("../../tests/fixtures/bundle-transaction.json");
const RESPONSE: &str = include_str!("../../tests/fixtures/bundle-response.json");
const THROTTLED: &str =
    include_str!("../../tests/fixtures/operationoutcome-throttled-429.nz-sdhr.json");
const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

/// HAPI's answer when a conditional create matches two resources.
const MULTIPLE_MATCHES: &str = r#"{
  "resourceType": "OperationOutcome",
  "issue": [{
    "severity": "error",
    "code": "processing",
    "diagnostics": "HAPI-0958: Failed to CREATE resource with match URL \"Patient?identifier=http%3A%2F%2Fexample.org%2Ffhir%2Fids%7C234234\" because this search matched 2 resources",
    "expression": ["Bundle.entry[1].request"]
  }]
}"#;

fn client(server: &MockServer, auth: AuthConfig) -> FhirClient {
    FhirClient::new(FhirConfig::new(format!("{}/fhir", server.uri()), auth)).expect("client")
}

fn fhir_json(status: u16, body: &str) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_raw(body.as_bytes().to_vec(), "application/fhir+json")
}

#[tokio::test]
async fn transaction_posts_the_bundle_and_parses_the_response() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/fhir"))
        .and(header("content-type", "application/fhir+json"))
        .and(header("accept", "application/fhir+json"))
        .and(header("prefer", "return=minimal"))
        .and(header("traceparent", TRACEPARENT))
        .and(GzippedBody(BUNDLE.as_bytes().to_vec()))
        .respond_with(fhir_json(200, RESPONSE))
        .expect(1)
        .mount(&server)
        .await;

    assert!(BUNDLE.len() >= MIN_COMPRESSED_BODY);
    let response = client(&server, AuthConfig::None)
        .transaction(BUNDLE, Some(TRACEPARENT))
        .await
        .expect("delivered");

    let e = &response.entries;
    assert_eq!(e.len(), 10);
    assert_eq!(e[0].status, 201);
    assert_eq!(e[0].status_text, "201 Created");
    assert_eq!(e[0].location.as_deref(), Some("Patient/12423/_history/1"));
    assert_eq!(e[0].resource_id.as_deref(), Some("Patient/12423"));
    assert_eq!(e[0].etag.as_deref(), Some("W/\"1\""));
    assert_eq!((e[1].status, e[1].location.as_deref()), (200, None));
    assert_eq!(e[2].resource_id.as_deref(), Some("Patient/123"));
    assert_eq!(
        (e[4].status, e[4].resource_id.as_deref()),
        (200, Some("Patient/123a"))
    );
    assert_eq!(e[5].status, 202);
    assert_eq!((e[6].status, e[6].status_text.as_str()), (0, "DELETE"));
    assert_eq!(e[9].status, 304);
}

#[tokio::test]
async fn traceparent_is_not_sent_when_absent() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(fhir_json(200, RESPONSE))
        .mount(&server)
        .await;
    client(&server, AuthConfig::None)
        .transaction(BUNDLE, None)
        .await
        .expect("delivered");
    let requests = server.received_requests().await.expect("recorded");
    assert!(requests[0].headers.get("traceparent").is_none());
}

#[tokio::test]
async fn a_200_that_is_not_a_transaction_response_is_permanent() {
    let cases = [
        (
            r#"{"resourceType":"Bundle","type":"batch-response","entry":[]}"#,
            "a Bundle of type `batch-response`",
        ),
        (
            r#"{"resourceType":"Patient","id":"1","name":[{"family":"Chalmers"}]}"#,
            "a Patient resource",
        ),
        (
            "<html>login</html>",
            "a non-JSON body (application/fhir+json): <html>login</html>",
        ),
        ("", "an empty body"),
    ];
    for (body, expected) in cases {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(fhir_json(200, body))
            .mount(&server)
            .await;
        let err = client(&server, AuthConfig::None)
            .transaction(BUNDLE, None)
            .await
            .expect_err(body);
        assert!(
            matches!(err, FhirError::UnexpectedResponse { status: 200, .. }),
            "{err:?}"
        );
        assert!(!err.is_retryable());
        let msg = err.to_string();
        assert!(
            msg.contains("HTTP 200 OK") && msg.contains(expected),
            "{msg}"
        );
        assert!(!msg.contains("Chalmers"), "{msg}");
    }
}

#[tokio::test]
async fn multiple_matches_412_is_permanent_and_names_the_server_text_only() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(fhir_json(412, MULTIPLE_MATCHES))
        .mount(&server)
        .await;
    let err = client(&server, AuthConfig::None)
        .transaction(BUNDLE, None)
        .await
        .expect_err("412");
    assert!(!err.is_retryable());
    assert_eq!(err.retry_after(), None);
    let msg = err.to_string();
    assert!(
        msg.starts_with(
            "fhir server answered HTTP 412 Precondition Failed: error processing: HAPI-0958"
        ),
        "{msg}"
    );
    assert!(msg.contains("(at Bundle.entry[1].request)"), "{msg}");
    // Nothing from the bundle: no names, no narrative.
    for personal in ["Chalmers", "Peter", "narrative", "61ebe359"] {
        assert!(!msg.contains(personal), "{msg}");
    }
    let FhirError::Status { status, issues, .. } = err else {
        panic!("not a status error")
    };
    assert_eq!(status, 412);
    assert_eq!(issues.len(), 1);
    assert_eq!(issues[0].severity, "error");
}

#[tokio::test]
async fn throttled_429_is_retryable_after_the_servers_delay() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(fhir_json(429, THROTTLED).insert_header("Retry-After", "7"))
        .mount(&server)
        .await;
    let err = client(&server, AuthConfig::None)
        .transaction(BUNDLE, None)
        .await
        .expect_err("429");
    assert!(err.is_retryable());
    assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));
    assert_eq!(
        err.to_string(),
        "fhir server answered HTTP 429 Too Many Requests: error throttled: Request has been throttled due to exceeding the allocated rate limit."
    );
}

#[tokio::test]
async fn unavailable_503_with_an_http_date() {
    let server = MockServer::start().await;
    let at = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(120));
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(503)
                .set_body_raw("<h1>503 Service Unavailable</h1>", "text/html")
                .insert_header("Retry-After", at.as_str()),
        )
        .mount(&server)
        .await;
    let err = client(&server, AuthConfig::None)
        .transaction(BUNDLE, None)
        .await
        .expect_err("503");
    assert!(err.is_retryable());
    let wait = err.retry_after().expect("retry after");
    assert!(
        wait > Duration::from_secs(110) && wait <= Duration::from_secs(120),
        "{wait:?}"
    );
    assert!(
        err.to_string()
            .contains("(text/html): <h1>503 Service Unavailable</h1>"),
        "{err}"
    );
}

#[tokio::test]
async fn a_500_is_transient_then_the_retry_is_delivered() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(fhir_json(500, r#"{"resourceType":"OperationOutcome","issue":[{"severity":"fatal","code":"exception","diagnostics":"HAPI-0389: database is locked"}]}"#))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(fhir_json(200, RESPONSE))
        .mount(&server)
        .await;
    let client = client(&server, AuthConfig::None);
    let err = client.transaction(BUNDLE, None).await.expect_err("500");
    assert!(err.is_retryable());
    assert_eq!(err.retry_after(), None);
    assert!(
        err.to_string()
            .contains("500 Internal Server Error: fatal exception: HAPI-0389"),
        "{err}"
    );
    assert_eq!(
        client
            .transaction(BUNDLE, None)
            .await
            .expect("delivered")
            .entries
            .len(),
        10
    );
}

#[tokio::test]
async fn unreachable_server_is_transient() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let client = FhirClient::new(FhirConfig::new(
        format!("http://127.0.0.1:{port}/fhir"),
        AuthConfig::None,
    ))
    .expect("client");
    let err = client.transaction(BUNDLE, None).await.expect_err("refused");
    assert!(matches!(err, FhirError::Transport(_)), "{err:?}");
    assert!(err.is_retryable());
    assert!(err.to_string().starts_with("fhir request failed"), "{err}");
}

#[tokio::test]
async fn a_timeout_is_transient() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(fhir_json(200, RESPONSE).set_delay(Duration::from_secs(2)))
        .mount(&server)
        .await;
    let mut config = FhirConfig::new(format!("{}/fhir", server.uri()), AuthConfig::None);
    config.timeout = Duration::from_millis(200);
    let err = FhirClient::new(config)
        .expect("client")
        .transaction(BUNDLE, None)
        .await
        .expect_err("timeout");
    assert!(
        matches!(&err, FhirError::Transport(e) if e.is_timeout()),
        "{err:?}"
    );
    assert!(err.is_retryable());
}

#[tokio::test]
async fn basic_auth_header_and_secrets_never_print() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(basic_auth("kiungo", "pa:ss-w0rd"))
        .respond_with(fhir_json(200, RESPONSE))
        .expect(1)
        .mount(&server)
        .await;
    let auth = AuthConfig::Basic {
        username: "kiungo".into(),
        password: secret_file("pa:ss-w0rd"),
    };
    let client = client(&server, auth);
    client.transaction(BUNDLE, None).await.expect("delivered");
    let debug = format!("{client:?}");
    assert!(
        !debug.contains("pa:ss-w0rd") && !debug.contains("cGE6c3M"),
        "{debug}"
    );
    assert!(debug.contains("basic"), "{debug}");
}

#[tokio::test]
async fn bearer_token_header() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(bearer_token("static-token"))
        .respond_with(fhir_json(200, RESPONSE))
        .expect(1)
        .mount(&server)
        .await;
    let auth = AuthConfig::Bearer {
        token: secret_file("static-token"),
    };
    client(&server, auth)
        .transaction(BUNDLE, None)
        .await
        .expect("delivered");
}

fn oauth2(server: &MockServer) -> AuthConfig {
    AuthConfig::OAuth2 {
        token_url: format!("{}/token", server.uri()),
        client_id: "kiungo".into(),
        client_secret: secret_file("client-s3cret"),
        scope: Some("system/*.write".into()),
    }
}

fn token(access_token: &str, expires_in: u64) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(serde_json::json!({
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": expires_in,
    }))
}

fn token_request() -> wiremock::MockBuilder {
    Mock::given(method("POST"))
        .and(path("/token"))
        .and(basic_auth("kiungo", "client-s3cret"))
        .and(header("content-type", "application/x-www-form-urlencoded"))
        .and(body_string(
            "grant_type=client_credentials&scope=system%2F*.write",
        ))
}

#[tokio::test]
async fn oauth2_token_is_fetched_once_and_cached() {
    let server = MockServer::start().await;
    token_request()
        .respond_with(token("tok-1", 3600))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/fhir"))
        .and(bearer_token("tok-1"))
        .respond_with(fhir_json(200, RESPONSE))
        .expect(2)
        .mount(&server)
        .await;
    let client = client(&server, oauth2(&server));
    client.transaction(BUNDLE, None).await.expect("first");
    client.transaction(BUNDLE, None).await.expect("second");
    let debug = format!("{client:?}");
    assert!(
        !debug.contains("client-s3cret") && !debug.contains("tok-1"),
        "{debug}"
    );
}

#[tokio::test]
async fn oauth2_token_is_refreshed_before_it_expires() {
    let server = MockServer::start().await;
    // A one-second token is replaced after 0.9 s (a tenth of its life).
    token_request()
        .respond_with(token("tok-1", 1))
        .up_to_n_times(1)
        .expect(1)
        .mount(&server)
        .await;
    token_request()
        .respond_with(token("tok-2", 3600))
        .expect(1)
        .mount(&server)
        .await;
    for (tok, calls) in [("tok-1", 2), ("tok-2", 1)] {
        Mock::given(method("POST"))
            .and(path("/fhir"))
            .and(bearer_token(tok))
            .respond_with(fhir_json(200, RESPONSE))
            .expect(calls)
            .mount(&server)
            .await;
    }
    let client = client(&server, oauth2(&server));
    client.transaction(BUNDLE, None).await.expect("first");
    client.transaction(BUNDLE, None).await.expect("cached");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    client.transaction(BUNDLE, None).await.expect("refreshed");
}

#[tokio::test]
async fn oauth2_401_fetches_a_new_token_once() {
    let server = MockServer::start().await;
    token_request()
        .respond_with(token("revoked", 3600))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    token_request()
        .respond_with(token("fresh", 3600))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/fhir"))
        .and(bearer_token("revoked"))
        .respond_with(ResponseTemplate::new(401))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/fhir"))
        .and(bearer_token("fresh"))
        .respond_with(fhir_json(200, RESPONSE))
        .expect(2)
        .mount(&server)
        .await;
    let client = client(&server, oauth2(&server));
    client
        .transaction(BUNDLE, None)
        .await
        .expect("after a new token");
    client
        .transaction(BUNDLE, None)
        .await
        .expect("cached fresh token");
    let tokens = server
        .received_requests()
        .await
        .expect("recorded")
        .iter()
        .filter(|r| r.url.path() == "/token")
        .count();
    assert_eq!(tokens, 2);
}

#[tokio::test]
async fn oauth2_a_second_401_is_the_servers_answer() {
    let server = MockServer::start().await;
    token_request()
        .respond_with(token("tok", 3600))
        .expect(2)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/fhir"))
        .respond_with(fhir_json(401, r#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"login","diagnostics":"token not accepted"}]}"#))
        .expect(2)
        .mount(&server)
        .await;
    let err = client(&server, oauth2(&server))
        .transaction(BUNDLE, None)
        .await
        .expect_err("401");
    assert!(!err.is_retryable());
    assert!(
        err.to_string()
            .contains("401 Unauthorized: error login: token not accepted"),
        "{err}"
    );
}

#[tokio::test]
async fn oauth2_token_endpoint_failures_classify() {
    let server = MockServer::start().await;
    token_request()
        .respond_with(ResponseTemplate::new(401).set_body_json(serde_json::json!({
            "error": "invalid_client",
            "error_description": "Invalid client or Invalid client credentials",
        })))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    token_request()
        .respond_with(ResponseTemplate::new(503).insert_header("Retry-After", "30"))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    token_request()
        .respond_with(
            ResponseTemplate::new(200).set_body_json(serde_json::json!({"token_type": "Bearer"})),
        )
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/fhir"))
        .respond_with(fhir_json(200, RESPONSE))
        .expect(0)
        .mount(&server)
        .await;
    let client = client(&server, oauth2(&server));

    let err = client.transaction(BUNDLE, None).await.expect_err("401");
    assert!(
        matches!(
            err,
            FhirError::Auth(AuthError::TokenStatus { status: 401, .. })
        ),
        "{err:?}"
    );
    assert!(!err.is_retryable());
    assert_eq!(
        err.to_string(),
        "oauth2 token endpoint answered HTTP 401 Unauthorized: invalid_client: Invalid client or Invalid client credentials"
    );
    assert!(!err.to_string().contains("client-s3cret"));

    let err = client.transaction(BUNDLE, None).await.expect_err("503");
    assert!(err.is_retryable());
    assert_eq!(err.retry_after(), Some(Duration::from_secs(30)));

    let err = client
        .transaction(BUNDLE, None)
        .await
        .expect_err("no token");
    assert!(!err.is_retryable());
    assert!(err.to_string().contains("no `access_token`"), "{err}");
}

#[tokio::test]
async fn config_parses_with_defaults_and_refuses_typos() {
    let c: FhirConfig =
        serde_saphyr::from_str("base_url: https://hapi.example.org/fhir\n").expect("parses");
    assert_eq!(c.timeout, Duration::from_secs(30));
    assert_eq!(c.auth, AuthConfig::None);
    let c: FhirConfig = serde_saphyr::from_str(
        "base_url: https://hapi.example.org/fhir\ntimeout: 5s\nauth: {type: bearer, token: {env: FHIR_TOKEN}}\n",
    )
    .expect("parses");
    assert_eq!(c.timeout, Duration::from_secs(5));
    let err = serde_saphyr::from_str::<FhirConfig>("base_url: https://x\ntimout: 5s\n")
        .expect_err("typo");
    assert!(err.to_string().contains("timout"), "{err}");
    let err =
        FhirClient::new(FhirConfig::new("hapi:8080/fhir", AuthConfig::None)).expect_err("bad url");
    assert!(
        err.to_string()
            .starts_with("fhir.base_url: `hapi:8080/fhir`"),
        "{err}"
    );
}

#[tokio::test]
async fn bundles_go_gzipped_and_smaller() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(header("content-encoding", "gzip"))
        .respond_with(fhir_json(200, RESPONSE))
        .expect(1)
        .mount(&server)
        .await;

    client(&server, AuthConfig::None)
        .transaction(BUNDLE, None)
        .await
        .expect("delivered");

    let requests = server.received_requests().await.expect("recorded");
    let wire = &requests[0].body;
    assert_eq!(gunzip(wire, 1 << 20).expect("gzip"), BUNDLE.as_bytes());
    assert!(
        wire.len() * 3 < BUNDLE.len(),
        "{} bytes on the wire for {}",
        wire.len(),
        BUNDLE.len()
    );
    assert_eq!(
        requests[0]
            .headers
            .get("content-length")
            .map(|v| v.as_bytes()),
        Some(wire.len().to_string().as_bytes()),
        "the length on the wire is the compressed one"
    );
}

#[tokio::test]
async fn small_bundles_and_turned_off_compression_go_plain() {
    let small = r#"{"resourceType":"Bundle","type":"transaction","entry":[]}"#;
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(fhir_json(200, RESPONSE))
        .mount(&server)
        .await;
    client(&server, AuthConfig::None)
        .transaction(small, None)
        .await
        .expect("delivered");
    let mut config = FhirConfig::new(format!("{}/fhir", server.uri()), AuthConfig::None);
    config.compress_requests = false;
    FhirClient::new(config)
        .expect("client")
        .transaction(BUNDLE, None)
        .await
        .expect("delivered");

    let requests = server.received_requests().await.expect("recorded");
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].body, small.as_bytes());
    assert_eq!(requests[1].body, BUNDLE.as_bytes());
    assert!(
        requests
            .iter()
            .all(|r| r.headers.get("content-encoding").is_none())
    );
}

#[tokio::test]
async fn a_415_for_gzip_falls_back_to_plain_for_good() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(header("content-encoding", "gzip"))
        .respond_with(fhir_json(
            415,
            r#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"not-supported","diagnostics":"Content-Encoding gzip is not supported"}]}"#,
        ))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(body_string(BUNDLE))
        .respond_with(fhir_json(200, RESPONSE))
        .expect(2)
        .mount(&server)
        .await;

    let c = client(&server, AuthConfig::None);
    // Delivered by the plain resend, not parked or retried later.
    c.transaction(BUNDLE, None).await.expect("delivered");
    assert!(!c.compression.is_enabled());
    // The next bundle goes plain at once.
    c.transaction(BUNDLE, None).await.expect("delivered");
}

#[tokio::test]
async fn a_400_about_the_content_keeps_compression_on() {
    let server = MockServer::start().await;
    let outcome = r#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"invalid","diagnostics":"Patient.gender: invalid code; expected encoding of administrative-gender"}]}"#;
    Mock::given(method("POST"))
        .respond_with(fhir_json(400, outcome))
        .expect(2)
        .mount(&server)
        .await;

    let c = client(&server, AuthConfig::None);
    let err = c.transaction(BUNDLE, None).await.expect_err("rejected");
    assert!(!err.is_retryable(), "{err}");
    assert!(err.to_string().contains("administrative-gender"), "{err}");
    // Plain got the same refusal: the content, not the encoding.
    assert!(c.compression.is_enabled());
}

#[tokio::test]
async fn gzipped_answers_are_asked_for_and_decoded() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(header("accept-encoding", "gzip"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("content-encoding", "gzip")
                .set_body_raw(
                    crate::http::gzip(RESPONSE.as_bytes()),
                    "application/fhir+json",
                ),
        )
        .expect(1)
        .mount(&server)
        .await;

    let response = client(&server, AuthConfig::None)
        .transaction(BUNDLE, None)
        .await
        .expect("delivered");
    assert_eq!(response.entries.len(), 10);
}
