//! A FHIR R4 server simulator: transaction bundles, reads and identifier
//! searches, in memory.
//!
//! Guarantee: a transaction is all or nothing. Every entry is resolved
//! (ids assigned, conditional creates and updates searched, `urn:uuid:`
//! references rewritten) against the state before the transaction, under
//! one lock; only when every entry resolved are the writes applied. A
//! failed transaction (400, 404, 412) and a faulted or unauthorised
//! request change nothing.
//!
//! Behaviour follows the contract note `fhir-contract.md` and HAPI where
//! the spec leaves a choice: a conditional create that matches one
//! resource answers `200 OK` with that resource's location; more than one
//! match fails the whole transaction with 412 `multiple-matches`; a PUT
//! whose content equals the stored resource answers `200 OK` without a new
//! version (HAPI's no-op update), any other PUT of an existing resource
//! increments `versionId`.
//!
//! Overlap detector: every transaction request counts as in flight from
//! the moment its body is read until its answer is ready (an injected
//! latency included). A request that starts while another one in flight
//! carries the same bundle (same bytes: one outbox row delivered twice at
//! once, as a double claim by two replicas would do) or writes one of the
//! same resources (`PUT`/`DELETE` targets, which the mappings derive from
//! the event: two versions of one event at once) is counted;
//! `GET /sandbox/overlaps` and [`Sandbox::fhir_overlaps`](super::Sandbox::fhir_overlaps)
//! answer the counts. Conditional creates (`POST` with `ifNoneExist`,
//! a patient shared by many events) are not identities.
//!
//! Compression, as HAPI: a transaction body with `Content-Encoding: gzip`
//! (exactly, HAPI's `RestfulServer.uncompressIncomingContents`, on by
//! default) is inflated before it is read; one that does not inflate is a
//! 400 (`HAPI-0308`). Answers are not compressed. `GET /sandbox/traffic`
//! and [`Sandbox::fhir_traffic`](super::Sandbox::fhir_traffic) count the
//! transactions, the bytes that came over the wire and what they inflated
//! to, and the TCP connections clients opened (distinct peer ports).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::{Map, Value, json};

use super::faults::{Fault, FaultControl};

/// A stored resource version.
#[derive(Debug, Clone)]
struct Stored {
    version: u64,
    last_updated: String,
    resource: Value,
}

/// Resources by type and id, with an identifier index.
#[derive(Debug, Default)]
struct Resources {
    by_type: BTreeMap<String, BTreeMap<String, Stored>>,
    /// `Type/id` of resources deleted and not written since.
    deleted: BTreeSet<String>,
    /// (type, system, value) -> ids.
    identifiers: HashMap<(String, String, String), BTreeSet<String>>,
}

fn identifiers(resource: &Value) -> Vec<(String, String)> {
    resource
        .get("identifier")
        .and_then(Value::as_array)
        .map(|ids| {
            ids.iter()
                .map(|i| {
                    (
                        i.get("system")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_owned(),
                        i.get("value")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// One search criterion.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Criterion {
    /// `identifier=[system|]value`: `system` None = any system; Some("")
    /// = no system; `value` None = any value.
    Identifier {
        system: Option<String>,
        value: Option<String>,
    },
    /// `_id=x`.
    Id(String),
}

impl Criterion {
    fn matches(&self, id: &str, resource: &Value) -> bool {
        match self {
            Self::Id(want) => id == want,
            Self::Identifier { system, value } => identifiers(resource).iter().any(|(s, v)| {
                system.as_ref().is_none_or(|want| want == s)
                    && value.as_ref().is_none_or(|want| want == v)
            }),
        }
    }
}

/// Parses `identifier=sys|val&_id=..` (an optional `Type?` prefix is
/// accepted, as HAPI does). Parameters starting with `_` other than `_id`
/// are ignored; any other parameter is an error.
fn parse_search(query: &str) -> Result<Vec<Criterion>, String> {
    let query = query.split_once('?').map_or(query, |(_, q)| q);
    let mut out = Vec::new();
    for (k, v) in super::query_pairs(query) {
        match k.as_str() {
            "identifier" => {
                let (system, value) = match v.split_once('|') {
                    Some((s, val)) => (
                        Some(s.to_owned()),
                        (!val.is_empty()).then(|| val.to_owned()),
                    ),
                    None => (None, Some(v.clone())),
                };
                out.push(Criterion::Identifier { system, value });
            }
            "_id" => out.push(Criterion::Id(v)),
            k if k.starts_with('_') => {}
            other => {
                return Err(format!(
                    "unknown search parameter: {other} (the sandbox supports identifier and _id)"
                ));
            }
        }
    }
    if out.is_empty() {
        return Err(format!("no search criteria in \"{query}\""));
    }
    Ok(out)
}

impl Resources {
    fn get(&self, ty: &str, id: &str) -> Option<&Stored> {
        self.by_type.get(ty)?.get(id)
    }

    fn put(&mut self, ty: &str, id: &str, stored: Stored) {
        self.unindex(ty, id);
        for (s, v) in identifiers(&stored.resource) {
            self.identifiers
                .entry((ty.to_owned(), s, v))
                .or_default()
                .insert(id.to_owned());
        }
        self.by_type
            .entry(ty.to_owned())
            .or_default()
            .insert(id.to_owned(), stored);
    }

    fn remove(&mut self, ty: &str, id: &str) -> bool {
        self.unindex(ty, id);
        self.by_type
            .get_mut(ty)
            .is_some_and(|m| m.remove(id).is_some())
    }

    fn unindex(&mut self, ty: &str, id: &str) {
        if let Some(old) = self.get(ty, id) {
            for (s, v) in identifiers(&old.resource) {
                let key = (ty.to_owned(), s, v);
                if let Some(set) = self.identifiers.get_mut(&key) {
                    set.remove(id);
                    if set.is_empty() {
                        self.identifiers.remove(&key);
                    }
                }
            }
        }
    }

    /// Ids of `ty` matching every criterion.
    fn search(&self, ty: &str, criteria: &[Criterion]) -> Vec<String> {
        // Fast path: an exact identifier.
        if let Some(Criterion::Identifier {
            system: Some(s),
            value: Some(v),
        }) = criteria.first()
        {
            let key = (ty.to_owned(), s.clone(), v.clone());
            return self
                .identifiers
                .get(&key)
                .into_iter()
                .flatten()
                .filter(|id| {
                    self.get(ty, id)
                        .is_some_and(|r| criteria.iter().all(|c| c.matches(id, &r.resource)))
                })
                .cloned()
                .collect();
        }
        self.by_type
            .get(ty)
            .into_iter()
            .flatten()
            .filter(|(id, r)| criteria.iter().all(|c| c.matches(id, &r.resource)))
            .map(|(id, _)| id.clone())
            .collect()
    }
}

/// A failed request: status and OperationOutcome.
#[derive(Debug)]
struct Failure {
    status: StatusCode,
    code: &'static str,
    diagnostics: String,
}

fn fail(status: StatusCode, code: &'static str, diagnostics: impl Into<String>) -> Failure {
    Failure {
        status,
        code,
        diagnostics: diagnostics.into(),
    }
}

fn bad(diagnostics: impl Into<String>) -> Failure {
    fail(StatusCode::BAD_REQUEST, "invalid", diagnostics)
}

/// An OperationOutcome with one error issue.
pub fn operation_outcome(code: &str, diagnostics: &str) -> Value {
    json!({
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": diagnostics}],
    })
}

fn fhir_json(status: StatusCode, body: &Value) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("application/fhir+json; charset=utf-8")
        .body(body.to_string())
}

fn failure_response(f: &Failure) -> HttpResponse {
    fhir_json(f.status, &operation_outcome(f.code, &f.diagnostics))
}

fn valid_type(ty: &str) -> bool {
    ty.starts_with(|c: char| c.is_ascii_uppercase())
        && ty.chars().all(|c| c.is_ascii_alphanumeric())
}

fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// What one entry will do once the transaction commits.
#[derive(Debug)]
enum Action {
    Create,
    Update,
    /// Conditional create matched, or a PUT with unchanged content.
    Unchanged,
    Delete,
}

#[derive(Debug)]
struct Planned {
    index: usize,
    ty: String,
    id: String,
    action: Action,
    resource: Option<Value>,
}

/// Transaction requests in flight, by identity, and the overlaps seen.
#[derive(Debug, Default)]
struct InFlight {
    /// Identity key -> requests in flight holding it.
    keys: HashMap<String, usize>,
    /// Requests in flight now.
    now: usize,
    /// Most requests in flight at once.
    max: usize,
    /// Transaction requests seen.
    requests: u64,
    /// Requests that started while another with the same bytes was in flight.
    same_bundle: u64,
    /// Requests that started while another writing one of the same
    /// resources, with other bytes, was in flight.
    same_resource: u64,
    /// The first few overlaps: the shared key.
    examples: Vec<String>,
}

/// How many overlaps keep an example.
const OVERLAP_EXAMPLES: usize = 10;

/// The identity keys of a transaction: `bundle:<hash of the bytes>`, and
/// the `Type/id` (or conditional URL) of each `PUT` and `DELETE` entry.
fn identity_keys(bundle: &Value, bytes: &[u8]) -> Vec<String> {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    bytes.hash(&mut hasher);
    let mut keys = vec![format!("bundle:{:016x}", hasher.finish())];
    for entry in bundle
        .get("entry")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let request = entry.get("request");
        let method = request
            .and_then(|r| r.get("method"))
            .and_then(Value::as_str);
        let url = request.and_then(|r| r.get("url")).and_then(Value::as_str);
        if let (Some("PUT" | "DELETE"), Some(url)) = (method, url) {
            let key = url.trim_start_matches('/').to_owned();
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
    }
    keys
}

/// A request in flight; leaves the registry when dropped (answered, or
/// the client went away).
struct InFlightGuard<'a> {
    state: &'a FhirState,
    keys: Vec<String>,
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        let mut f = self
            .state
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        f.now = f.now.saturating_sub(1);
        for key in &self.keys {
            if let Some(n) = f.keys.get_mut(key) {
                *n -= 1;
                if *n == 0 {
                    f.keys.remove(key);
                }
            }
        }
    }
}

/// What came over the wire, for benchmarks.
#[derive(Debug, Default)]
struct Traffic {
    /// Transaction requests.
    transactions: u64,
    /// Of which gzipped.
    gzipped: u64,
    /// Transaction body bytes as received.
    wire_bytes: u64,
    /// The same bodies inflated.
    body_bytes: u64,
    /// Client (address, port) pairs seen: one per TCP connection.
    peers: HashSet<SocketAddr>,
}

/// The simulator's state.
pub struct FhirState {
    resources: Mutex<Resources>,
    in_flight: Mutex<InFlight>,
    traffic: Mutex<Traffic>,
    bearer_token: Option<String>,
    pub(crate) faults: FaultControl,
}

impl std::fmt::Debug for FhirState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FhirState").finish_non_exhaustive()
    }
}

fn without_meta(resource: &Value) -> Value {
    let mut r = resource.clone();
    if let Some(o) = r.as_object_mut() {
        o.remove("meta");
        o.remove("id");
    }
    r
}

/// Replaces every `reference` string found in `map`; conditional
/// references (`Type?query`) are resolved by `resolve`.
fn rewrite_references(
    value: &mut Value,
    map: &HashMap<String, String>,
    resolve: &dyn Fn(&str) -> Result<Option<String>, Failure>,
) -> Result<(), Failure> {
    match value {
        Value::Object(o) => {
            for (k, v) in o.iter_mut() {
                if k == "reference"
                    && let Value::String(r) = v
                {
                    if let Some(target) = map.get(r.as_str()) {
                        *r = target.clone();
                    } else if r.starts_with("urn:uuid:") || r.starts_with("urn:oid:") {
                        return Err(bad(format!(
                            "unable to satisfy placeholder id {r}: no entry in the bundle has this fullUrl"
                        )));
                    } else if let Some(target) = resolve(r)? {
                        *r = target;
                    }
                } else {
                    rewrite_references(v, map, resolve)?;
                }
            }
        }
        Value::Array(a) => {
            for v in a {
                rewrite_references(v, map, resolve)?;
            }
        }
        _ => {}
    }
    Ok(())
}

impl FhirState {
    /// A simulator that requires `bearer_token` when given.
    pub fn new(bearer_token: Option<String>, faults: FaultControl) -> Self {
        Self {
            resources: Mutex::new(Resources::default()),
            in_flight: Mutex::new(InFlight::default()),
            traffic: Mutex::new(Traffic::default()),
            bearer_token,
            faults,
        }
    }

    /// What clients sent (what `GET /sandbox/traffic` answers):
    /// transactions, how many were gzipped, body bytes on the wire and
    /// inflated, and TCP connections opened (distinct client ports).
    pub fn traffic_json(&self) -> Value {
        let t = self.traffic.lock().unwrap_or_else(PoisonError::into_inner);
        json!({
            "transactions": t.transactions,
            "gzipped": t.gzipped,
            "wire_bytes": t.wire_bytes,
            "body_bytes": t.body_bytes,
            "connections": t.peers.len(),
        })
    }

    /// Notes the connection a request came on.
    fn saw_peer(&self, req: &HttpRequest) {
        if let Some(peer) = req.peer_addr() {
            let mut t = self.traffic.lock().unwrap_or_else(PoisonError::into_inner);
            t.peers.insert(peer);
        }
    }

    /// Counts one transaction body: `wire` bytes received, `body` inflated.
    fn count(&self, wire: usize, body: usize, gzipped: bool) {
        let mut t = self.traffic.lock().unwrap_or_else(PoisonError::into_inner);
        t.transactions += 1;
        t.gzipped += u64::from(gzipped);
        t.wire_bytes += wire as u64;
        t.body_bytes += body as u64;
    }

    /// Counts per type and every resource, as `/sandbox/resources` shows.
    pub fn resources_json(&self) -> Value {
        let store = self
            .resources
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut counts = Map::new();
        let mut all = Vec::new();
        let mut total = 0;
        for (ty, by_id) in &store.by_type {
            if by_id.is_empty() {
                continue;
            }
            counts.insert(ty.clone(), json!(by_id.len()));
            total += by_id.len();
            all.extend(by_id.values().map(|s| s.resource.clone()));
        }
        // Withdrawn: deleted, or marked entered-in-error in place.
        let entered_in_error: Vec<String> = all
            .iter()
            .filter(|r| {
                r.get("status").and_then(Value::as_str) == Some("entered-in-error")
                    || r.get("lifecycleStatus").and_then(Value::as_str) == Some("entered-in-error")
                    || r.pointer("/verificationStatus/coding/0/code")
                        .and_then(Value::as_str)
                        == Some("entered-in-error")
            })
            .filter_map(|r| {
                Some(format!(
                    "{}/{}",
                    r.get("resourceType")?.as_str()?,
                    r.get("id")?.as_str()?
                ))
            })
            .collect();
        json!({"total": total, "counts": counts, "resources": all,
               "deleted": store.deleted, "entered_in_error": entered_in_error})
    }

    /// Registers a transaction request as in flight, counting an overlap
    /// if a request with the same identity already is.
    fn begin(&self, bundle: &Value, bytes: &[u8]) -> InFlightGuard<'_> {
        let keys = identity_keys(bundle, bytes);
        let mut f = self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        f.requests += 1;
        f.now += 1;
        f.max = f.max.max(f.now);
        let shared = keys.iter().find(|k| f.keys.contains_key(*k)).cloned();
        if let Some(key) = shared {
            if key.starts_with("bundle:") {
                f.same_bundle += 1;
            } else {
                f.same_resource += 1;
            }
            if f.examples.len() < OVERLAP_EXAMPLES {
                f.examples.push(key);
            }
        }
        for key in &keys {
            *f.keys.entry(key.clone()).or_default() += 1;
        }
        drop(f);
        InFlightGuard { state: self, keys }
    }

    /// The overlap detector's counts, as `/sandbox/overlaps` shows:
    /// `overlaps` (= `same_bundle` + `same_resource`), `requests`,
    /// `in_flight`, `max_in_flight` and the first shared keys.
    pub fn overlaps_json(&self) -> Value {
        let f = self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        json!({
            "overlaps": f.same_bundle + f.same_resource,
            "same_bundle": f.same_bundle,
            "same_resource": f.same_resource,
            "requests": f.requests,
            "in_flight": f.now,
            "max_in_flight": f.max,
            "examples": f.examples,
        })
    }

    /// Processes a transaction bundle; returns the transaction-response.
    fn transaction(
        &self,
        bundle: &Value,
        base: &str,
        representation: bool,
    ) -> Result<Value, Failure> {
        let obj = bundle
            .as_object()
            .ok_or_else(|| bad("the body is not a JSON object"))?;
        match obj.get("resourceType").and_then(Value::as_str) {
            Some("Bundle") => {}
            Some(other) => return Err(bad(format!("expected a Bundle, got {other}"))),
            None => return Err(bad("missing resourceType")),
        }
        match obj.get("type").and_then(Value::as_str) {
            Some("transaction") => {}
            Some(other) => {
                return Err(bad(format!(
                    "only transaction bundles are processed at the base url, got type {other}"
                )));
            }
            None => return Err(bad("Bundle.type is missing")),
        }
        let empty = Vec::new();
        let entries = obj.get("entry").and_then(Value::as_array).unwrap_or(&empty);

        let mut store = self
            .resources
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut plans: Vec<Option<Planned>> = (0..entries.len()).map(|_| None).collect();
        let mut aliases: HashMap<String, String> = HashMap::new();
        // Spec order: DELETE, POST, PUT.
        for pass in ["DELETE", "POST", "PUT"] {
            for (i, entry) in entries.iter().enumerate() {
                let request = entry
                    .get("request")
                    .ok_or_else(|| bad(format!("Bundle.entry[{i}].request is missing")))?;
                let method = request
                    .get("method")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad(format!("Bundle.entry[{i}].request.method is missing")))?;
                if !matches!(method, "DELETE" | "POST" | "PUT") {
                    return Err(fail(
                        StatusCode::BAD_REQUEST,
                        "not-supported",
                        format!(
                            "Bundle.entry[{i}]: method {method} is not supported by the sandbox"
                        ),
                    ));
                }
                if method != pass {
                    continue;
                }
                let url = request
                    .get("url")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad(format!("Bundle.entry[{i}].request.url is missing")))?;
                let plan = plan_entry(&store, i, entry, method, url, request)?;
                if let Some(full_url) = entry.get("fullUrl").and_then(Value::as_str) {
                    aliases.insert(full_url.to_owned(), format!("{}/{}", plan.ty, plan.id));
                }
                plans[i] = Some(plan);
            }
        }
        let plans: Vec<Planned> = plans.into_iter().flatten().collect();
        let mut seen = HashSet::new();
        for p in &plans {
            if !seen.insert((p.ty.as_str(), p.id.as_str())) {
                return Err(bad(format!(
                    "the transaction touches {}/{} more than once",
                    p.ty, p.id
                )));
            }
        }
        // Conditional references: against the store and this bundle.
        let resolve = |reference: &str| -> Result<Option<String>, Failure> {
            let Some((ty, query)) = reference.split_once('?') else {
                return Ok(None);
            };
            let criteria = parse_search(query).map_err(bad)?;
            let mut ids: BTreeSet<String> = store.search(ty, &criteria).into_iter().collect();
            for p in &plans {
                if p.ty == ty
                    && let Some(r) = &p.resource
                    && criteria.iter().all(|c| c.matches(&p.id, r))
                {
                    ids.insert(p.id.clone());
                }
            }
            match ids.len() {
                1 => Ok(ids.pop_first().map(|id| format!("{ty}/{id}"))),
                0 => Err(fail(
                    StatusCode::NOT_FOUND,
                    "not-found",
                    format!("conditional reference {reference} matched no resource"),
                )),
                n => Err(fail(
                    StatusCode::PRECONDITION_FAILED,
                    "multiple-matches",
                    format!("conditional reference {reference} matched {n} resources"),
                )),
            }
        };
        let mut rewritten = Vec::with_capacity(plans.len());
        for p in &plans {
            let mut resource = p.resource.clone();
            if let Some(r) = resource.as_mut() {
                rewrite_references(r, &aliases, &resolve)?;
            }
            rewritten.push(resource);
        }
        let mut plans = plans;
        for (p, r) in plans.iter_mut().zip(rewritten) {
            p.resource = r;
        }
        // Unchanged PUTs: compare after rewriting.
        for p in &mut plans {
            if matches!(p.action, Action::Update)
                && let (Some(new), Some(old)) = (&p.resource, store.get(&p.ty, &p.id))
                && without_meta(new) == without_meta(&old.resource)
            {
                p.action = Action::Unchanged;
            }
        }

        // Commit: nothing below can fail.
        let stamp = now();
        let mut out: Vec<(usize, Value)> = Vec::with_capacity(plans.len());
        for p in &plans {
            let response = match p.action {
                Action::Delete => {
                    store.remove(&p.ty, &p.id);
                    store.deleted.insert(format!("{}/{}", p.ty, p.id));
                    json!({"response": {"status": "204 No Content"}})
                }
                Action::Unchanged => {
                    let (version, last) = store
                        .get(&p.ty, &p.id)
                        .map(|s| (s.version, s.last_updated.clone()))
                        .unwrap_or((1, stamp.clone()));
                    entry_response(&store, base, representation, p, "200 OK", version, &last)
                }
                Action::Create | Action::Update => {
                    store.deleted.remove(&format!("{}/{}", p.ty, p.id));
                    let version = store.get(&p.ty, &p.id).map_or(1, |s| s.version + 1);
                    let mut resource = p.resource.clone().unwrap_or_else(|| json!({}));
                    if let Some(o) = resource.as_object_mut() {
                        o.insert("id".into(), json!(p.id));
                        let meta = o.entry("meta").or_insert_with(|| json!({}));
                        if let Some(m) = meta.as_object_mut() {
                            m.insert("versionId".into(), json!(version.to_string()));
                            m.insert("lastUpdated".into(), json!(stamp));
                        }
                    }
                    store.put(
                        &p.ty,
                        &p.id,
                        Stored {
                            version,
                            last_updated: stamp.clone(),
                            resource,
                        },
                    );
                    let status = if version == 1 {
                        "201 Created"
                    } else {
                        "200 OK"
                    };
                    entry_response(&store, base, representation, p, status, version, &stamp)
                }
            };
            out.push((p.index, response));
        }
        // Answer in request order.
        out.sort_by_key(|(i, _)| *i);
        let out: Vec<Value> = out.into_iter().map(|(_, r)| r).collect();
        Ok(json!({
            "resourceType": "Bundle",
            "id": uuid::Uuid::new_v4().to_string(),
            "type": "transaction-response",
            "meta": {"lastUpdated": stamp},
            "entry": out,
        }))
    }

    fn read(&self, ty: &str, id: &str) -> Option<(Value, u64, String)> {
        let store = self
            .resources
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        store
            .get(ty, id)
            .map(|s| (s.resource.clone(), s.version, s.last_updated.clone()))
    }

    fn search(&self, ty: &str, query: &str, base: &str) -> Result<Value, Failure> {
        let criteria = parse_search(query).map_err(bad)?;
        let store = self
            .resources
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let ids = store.search(ty, &criteria);
        let entries: Vec<Value> = ids
            .iter()
            .filter_map(|id| store.get(ty, id).map(|s| (id, s)))
            .map(|(id, s)| {
                json!({
                    "fullUrl": format!("{base}/{ty}/{id}"),
                    "resource": s.resource,
                    "search": {"mode": "match"},
                })
            })
            .collect();
        Ok(json!({
            "resourceType": "Bundle",
            "id": uuid::Uuid::new_v4().to_string(),
            "type": "searchset",
            "total": entries.len(),
            "entry": entries,
        }))
    }
}

fn entry_response(
    store: &Resources,
    base: &str,
    representation: bool,
    p: &Planned,
    status: &str,
    version: u64,
    last_modified: &str,
) -> Value {
    let mut e = Map::new();
    if representation && let Some(s) = store.get(&p.ty, &p.id) {
        e.insert("fullUrl".into(), json!(format!("{base}/{}/{}", p.ty, p.id)));
        e.insert("resource".into(), s.resource.clone());
    }
    e.insert(
        "response".into(),
        json!({
            "status": status,
            "location": format!("{}/{}/_history/{version}", p.ty, p.id),
            "etag": format!("W/\"{version}\""),
            "lastModified": last_modified,
        }),
    );
    Value::Object(e)
}

/// Works out what one entry does, against the state before the
/// transaction.
fn plan_entry(
    store: &Resources,
    i: usize,
    entry: &Value,
    method: &str,
    url: &str,
    request: &Value,
) -> Result<Planned, Failure> {
    let url = url.trim_start_matches('/');
    let (path, query) = match url.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (url, None),
    };
    let mut segments = path.split('/');
    let ty = segments.next().unwrap_or("").to_owned();
    let id = segments.next().map(str::to_owned);
    if !valid_type(&ty) || segments.next().is_some() {
        return Err(bad(format!(
            "Bundle.entry[{i}].request.url {url} is not Type, Type/id or Type?query"
        )));
    }
    let resource = if method == "DELETE" {
        None
    } else {
        let r = entry
            .get("resource")
            .filter(|r| r.is_object())
            .ok_or_else(|| bad(format!("Bundle.entry[{i}].resource is missing")))?;
        match r.get("resourceType").and_then(Value::as_str) {
            None => {
                return Err(bad(format!(
                    "Bundle.entry[{i}].resource has no resourceType"
                )));
            }
            Some(rt) if rt != ty => {
                return Err(bad(format!(
                    "Bundle.entry[{i}]: resource type {rt} does not match request url {url}"
                )));
            }
            Some(_) => {}
        }
        Some(r.clone())
    };
    let matches = |query: &str| -> Result<Vec<String>, Failure> {
        let criteria = parse_search(query).map_err(|e| bad(format!("Bundle.entry[{i}]: {e}")))?;
        Ok(store.search(&ty, &criteria))
    };
    let multiple = |query: &str, n: usize| {
        fail(
            StatusCode::PRECONDITION_FAILED,
            "multiple-matches",
            format!(
                "Failed to {} resource with match URL \"{query}\" because this search matched {n} resources",
                if method == "POST" { "CREATE" } else { "UPDATE" }
            ),
        )
    };
    let new_id = || uuid::Uuid::new_v4().to_string();
    match method {
        "POST" => {
            if id.is_some() || query.is_some() {
                return Err(bad(format!(
                    "Bundle.entry[{i}]: POST url must be a type, got {url}"
                )));
            }
            let if_none_exist = request.get("ifNoneExist").and_then(Value::as_str);
            let (id, action) = match if_none_exist {
                None => (new_id(), Action::Create),
                Some(q) => match matches(q)?.as_slice() {
                    [] => (new_id(), Action::Create),
                    [one] => (one.clone(), Action::Unchanged),
                    more => return Err(multiple(q, more.len())),
                },
            };
            Ok(Planned {
                index: i,
                ty,
                id,
                action,
                resource,
            })
        }
        "PUT" => {
            let body_id = resource
                .as_ref()
                .and_then(|r| r.get("id"))
                .and_then(Value::as_str)
                .map(str::to_owned);
            let id = match (id, query) {
                (Some(id), None) => {
                    if body_id.as_ref().is_some_and(|b| *b != id) {
                        return Err(bad(format!(
                            "Bundle.entry[{i}]: resource id {} does not match url {url}",
                            body_id.unwrap_or_default()
                        )));
                    }
                    id
                }
                (None, Some(q)) => match matches(q)?.as_slice() {
                    [] => body_id.unwrap_or_else(new_id),
                    [one] => one.clone(),
                    more => return Err(multiple(q, more.len())),
                },
                _ => {
                    return Err(bad(format!(
                        "Bundle.entry[{i}]: PUT url must be Type/id or Type?query, got {url}"
                    )));
                }
            };
            if !valid_id(&id) {
                return Err(bad(format!("Bundle.entry[{i}]: invalid id {id}")));
            }
            let action = if store.get(&ty, &id).is_some() {
                Action::Update
            } else {
                Action::Create
            };
            Ok(Planned {
                index: i,
                ty,
                id,
                action,
                resource,
            })
        }
        _ => {
            let id = match (id, query) {
                (Some(id), None) => id,
                (None, Some(q)) => match matches(q)?.as_slice() {
                    [one] => one.clone(),
                    [] => {
                        return Err(fail(
                            StatusCode::NOT_FOUND,
                            "not-found",
                            format!("no {ty} matches {q}"),
                        ));
                    }
                    more => return Err(multiple(q, more.len())),
                },
                _ => {
                    return Err(bad(format!(
                        "Bundle.entry[{i}]: DELETE url must be Type/id or Type?query"
                    )));
                }
            };
            Ok(Planned {
                index: i,
                ty,
                id,
                action: Action::Delete,
                resource: None,
            })
        }
    }
}

// ---------------------------------------------------------------------------
// HTTP

fn fault_response(fault: Fault) -> HttpResponse {
    let code = match fault {
        Fault::Throttled { .. } => "throttled",
        Fault::Outage { .. } | Fault::Unavailable => "transient",
        Fault::Internal => "exception",
    };
    fault_builder(fault)
        .content_type("application/fhir+json; charset=utf-8")
        .body(
            json!({
                "resourceType": "OperationOutcome",
                "issue": [{"severity": "error", "code": code, "details": {"text": fault.message()}}],
            })
            .to_string(),
        )
}

fn fault_builder(fault: Fault) -> actix_web::HttpResponseBuilder {
    fault.response_builder()
}

/// Faults first (nothing changes on a fault), then the bearer token.
async fn gate(state: &FhirState, req: &HttpRequest) -> Option<HttpResponse> {
    state.saw_peer(req);
    if let Some(fault) = state.faults.apply().await {
        return Some(fault_response(fault));
    }
    let Some(token) = &state.bearer_token else {
        return None;
    };
    let given = req
        .headers()
        .get("Authorization")
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("Bearer"))
        .map(|(_, t)| t.trim());
    if given == Some(token.as_str()) {
        return None;
    }
    let mut response = fhir_json(
        StatusCode::UNAUTHORIZED,
        &operation_outcome("login", "missing or invalid bearer token"),
    );
    response.headers_mut().insert(
        actix_web::http::header::WWW_AUTHENTICATE,
        actix_web::http::header::HeaderValue::from_static("Bearer realm=\"fhir\""),
    );
    Some(response)
}

fn base_url(req: &HttpRequest) -> String {
    let info = req.connection_info();
    format!("{}://{}", info.scheme(), info.host())
}

async fn post_transaction(
    state: web::Data<FhirState>,
    req: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    let gzipped = req
        .headers()
        .get(actix_web::http::header::CONTENT_ENCODING)
        .is_some_and(|v| v.as_bytes() == b"gzip");
    let body = if gzipped {
        match kiungo_connectors::gunzip(&body, super::MAX_BODY_BYTES) {
            Ok(inflated) => {
                state.count(body.len(), inflated.len(), true);
                web::Bytes::from(inflated)
            }
            Err(e) => {
                state.count(body.len(), 0, true);
                state.saw_peer(&req);
                return fhir_json(
                    StatusCode::BAD_REQUEST,
                    &operation_outcome(
                        "processing",
                        &format!("HAPI-0308: Could not load request resource: {e}"),
                    ),
                );
            }
        }
    } else {
        state.count(body.len(), body.len(), false);
        body
    };
    // Parsed before the gate, so that the request is in flight for the
    // overlap detector for as long as it is being answered.
    let parsed: Result<Value, serde_json::Error> = serde_json::from_slice(&body);
    let _in_flight = parsed.as_ref().ok().map(|b| state.begin(b, &body));
    if let Some(r) = gate(&state, &req).await {
        return r;
    }
    let content_type = req
        .headers()
        .get("Content-Type")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if !content_type.to_ascii_lowercase().contains("json") {
        return fhir_json(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            &operation_outcome(
                "not-supported",
                &format!(
                    "content type '{content_type}' is not supported; use application/fhir+json"
                ),
            ),
        );
    }
    let bundle: Value = match parsed {
        Ok(b) => b,
        Err(e) => {
            return fhir_json(
                StatusCode::BAD_REQUEST,
                &operation_outcome(
                    "invalid",
                    &format!("failed to parse the request body as JSON: {e}"),
                ),
            );
        }
    };
    let representation = req
        .headers()
        .get("Prefer")
        .and_then(|h| h.to_str().ok())
        .is_some_and(|p| p.contains("return=representation"));
    match state.transaction(&bundle, &base_url(&req), representation) {
        Ok(response) => fhir_json(StatusCode::OK, &response),
        Err(f) => failure_response(&f),
    }
}

async fn read(
    state: web::Data<FhirState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> HttpResponse {
    if let Some(r) = gate(&state, &req).await {
        return r;
    }
    let (ty, id) = path.into_inner();
    if !valid_type(&ty) {
        return failure_response(&fail(
            StatusCode::NOT_FOUND,
            "not-supported",
            format!("unknown resource type {ty}"),
        ));
    }
    match state.read(&ty, &id) {
        Some((resource, version, last)) => HttpResponse::Ok()
            .content_type("application/fhir+json; charset=utf-8")
            .insert_header(("ETag", format!("W/\"{version}\"")))
            .insert_header(("Last-Modified", last))
            .body(resource.to_string()),
        None => failure_response(&fail(
            StatusCode::NOT_FOUND,
            "not-found",
            format!("Resource {ty}/{id} is not known"),
        )),
    }
}

async fn search(
    state: web::Data<FhirState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> HttpResponse {
    if let Some(r) = gate(&state, &req).await {
        return r;
    }
    let ty = path.into_inner();
    if !valid_type(&ty) {
        return failure_response(&fail(
            StatusCode::NOT_FOUND,
            "not-supported",
            format!("unknown resource type {ty}"),
        ));
    }
    match state.search(&ty, req.query_string(), &base_url(&req)) {
        Ok(bundle) => fhir_json(StatusCode::OK, &bundle),
        Err(f) => failure_response(&f),
    }
}

async fn capability(state: web::Data<FhirState>, req: HttpRequest) -> HttpResponse {
    if let Some(r) = gate(&state, &req).await {
        return r;
    }
    fhir_json(
        StatusCode::OK,
        &json!({
            "resourceType": "CapabilityStatement",
            "status": "active",
            "date": now(),
            "kind": "instance",
            "software": {"name": "Kiungo FHIR sandbox"},
            "fhirVersion": "4.0.1",
            "format": ["application/fhir+json"],
            "rest": [{"mode": "server", "interaction": [{"code": "transaction"}]}],
        }),
    )
}

async fn sandbox_resources(state: web::Data<FhirState>) -> HttpResponse {
    HttpResponse::Ok().json(state.resources_json())
}

async fn sandbox_reset(state: web::Data<FhirState>) -> HttpResponse {
    *state
        .resources
        .lock()
        .unwrap_or_else(PoisonError::into_inner) = Resources::default();
    let mut f = state
        .in_flight
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    // Requests still in flight keep their keys; the counts start again.
    f.max = f.now;
    f.requests = 0;
    f.same_bundle = 0;
    f.same_resource = 0;
    f.examples.clear();
    drop(f);
    HttpResponse::NoContent().finish()
}

async fn sandbox_overlaps(state: web::Data<FhirState>) -> HttpResponse {
    HttpResponse::Ok().json(state.overlaps_json())
}

async fn sandbox_traffic(state: web::Data<FhirState>) -> HttpResponse {
    HttpResponse::Ok().json(state.traffic_json())
}

async fn get_faults(state: web::Data<FhirState>) -> HttpResponse {
    HttpResponse::Ok().json(state.faults.get())
}

async fn set_faults(state: web::Data<FhirState>, body: web::Bytes) -> HttpResponse {
    super::set_faults(&state.faults, &body)
}

/// Registers the simulator's routes on an actix app (sandbox routes
/// first, so they win over `/{type}/{id}`).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/sandbox/resources", web::get().to(sandbox_resources))
        .route("/sandbox/reset", web::post().to(sandbox_reset))
        .route("/sandbox/overlaps", web::get().to(sandbox_overlaps))
        .route("/sandbox/traffic", web::get().to(sandbox_traffic))
        .route("/sandbox/faults", web::get().to(get_faults))
        .route("/sandbox/faults", web::post().to(set_faults))
        .route("/", web::post().to(post_transaction))
        .route("/metadata", web::get().to(capability))
        .route("/{type}", web::get().to(search))
        .route("/{type}/{id}", web::get().to(read));
}

/// Shares the state with the server factory.
pub(crate) fn data(state: &Arc<FhirState>) -> web::Data<FhirState> {
    web::Data::from(state.clone())
}

impl super::Sandbox {
    /// The FHIR simulator's overlap detector (what `GET /sandbox/overlaps`
    /// answers): `overlaps` counts transaction requests that started while
    /// another request carrying the same bundle (`same_bundle`) or writing
    /// one of the same `PUT`/`DELETE` targets (`same_resource`) was in
    /// flight; `max_in_flight` shows how many ran at once.
    pub fn fhir_overlaps(&self) -> Value {
        self.fhir.overlaps_json()
    }
}

#[cfg(test)]
mod compression_tests {
    #![allow(clippy::unwrap_used)] // tests: a panic is the failure report

    use serde_json::{Value, json};

    use crate::sandbox::{Sandbox, SandboxConfig};

    fn bundle() -> Value {
        let entries: Vec<Value> = (0..20)
            .map(|i| {
                json!({"resource": {"resourceType": "Patient", "id": format!("p{i}"),
                    "name": [{"family": "Kamara", "given": ["Aminata"]}], "gender": "female"},
                    "request": {"method": "PUT", "url": format!("Patient/p{i}")}})
            })
            .collect();
        json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})
    }

    #[tokio::test]
    async fn gzipped_transactions_are_inflated_and_counted_on_the_wire() {
        crate::tls::install_crypto_provider();
        let sb = Sandbox::start(SandboxConfig::for_test()).await.unwrap();
        let plain = bundle().to_string().into_bytes();
        let gz = kiungo_connectors::gzip(&plain);
        let http = reqwest::Client::new();
        let post = |body: Vec<u8>, encoding: Option<&'static str>| {
            let mut r = http
                .post(sb.fhir_url())
                .header("Content-Type", "application/fhir+json")
                .body(body);
            if let Some(e) = encoding {
                r = r.header("Content-Encoding", e);
            }
            r.send()
        };
        assert_eq!(post(gz.clone(), Some("gzip")).await.unwrap().status(), 200);
        assert_eq!(sb.fhir_resources()["counts"]["Patient"], 20);
        // Not gzip after all: HAPI-0308, nothing stored.
        let response = post(plain.clone(), Some("gzip")).await.unwrap();
        assert_eq!(response.status(), 400);
        assert!(response.text().await.unwrap().contains("HAPI-0308"));
        // Gzip without the header is not JSON.
        assert_eq!(post(gz.clone(), None).await.unwrap().status(), 400);

        let t = sb.fhir_traffic();
        assert_eq!(t["transactions"], 3);
        assert_eq!(t["gzipped"], 2);
        assert_eq!(t["wire_bytes"], (2 * gz.len() + plain.len()) as u64, "{t}");
        assert_eq!(t["body_bytes"], (plain.len() + gz.len()) as u64, "{t}");
        assert_eq!(t["connections"], 1, "one kept-alive connection: {t}");
        sb.stop().await;
    }
}
