//! A deterministic workload of app events, for the end-to-end tests and the
//! load generator: many messages built from the shipped packs' fixtures,
//! with duplicates, edits, replacements and poison, and what a store must
//! hold once it has taken them all in.
//!
//! [`generate`] builds the messages (publish order, same seed same bytes);
//! [`expected`] maps them with the real [`MappingSet`] and works out the
//! final live version of every logical event and the DHIS2 totals. Neither
//! touches RabbitMQ or a database.
//!
//! How the messages are made:
//! - **Originals** clone a pack fixture that maps successfully (one with a
//!   `*.expected.json` sibling), give it a fresh event id in the field the
//!   mapping's `event_id` reads, and vary the facility (among the pack's
//!   `facilities.csv`) and the event date (up to [`MAX_DAY_OFFSET`] days
//!   after the fixture's), so that the DHIS2 totals spread over org units
//!   and periods.
//! - **Duplicates** re-send, byte for byte and with the same message id, the
//!   latest message of a live logical event (never an older version, so the
//!   last published version of an event is always its final one).
//! - **Edits** re-send a live logical event under the same event id (naming
//!   what it replaced, if it is a replacement, as the apps keep it), moved
//!   to a facility with another org unit (and, half of the time, another
//!   date), so its DHIS2 contributions change. An invalid Kobo RDT becomes
//!   negative (the repeat test), so that it contributes at all.
//! - **Replacements** (sources whose mapping declares `replaces`: `cht`,
//!   `kobo`) are edits the way those apps send them: a new event id whose
//!   payload names the old one as `deprecatedID` (`uuid:<old>`); the old
//!   event is withdrawn. Half of the edit slots of such events are
//!   replacements. Kobo keeps the record's `_id` across them, as Kobo does.
//! - **Poison** is invalid JSON (a truncated event or bytes that are not
//!   UTF-8), JSON that no mapping matches (the packs' other-form fixtures,
//!   and events of other forms or event types made from the base fixtures),
//!   and JSON that matches but fails to map (the unknown-facility and
//!   missing-field fixtures, and base events with an unknown facility).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail, ensure};
use chrono::{Days, NaiveDate};
use kiungo_mappings::{
    Aggregation, Event, LoadOptions, MapError, MappedEvent, MappingSet, PseudonymKey,
};
use serde_json::Value;

/// Timestamp of the first message (seconds since the Unix epoch,
/// 2024-06-01T00:00:00Z); message `i` has `BASE_TIMESTAMP + i`.
pub const BASE_TIMESTAMP: u64 = 1_717_200_000;

/// Largest number of days an event's date is moved after its fixture's.
pub const MAX_DAY_OFFSET: u64 = 90;

/// Share of the edits of a `replaces`-capable event that are replacements.
const REPLACEMENT_SHARE: f64 = 0.5;

/// What a message is, relative to the logical events of the workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// The first version of a logical event.
    Original,
    /// A byte-identical re-send (same message id) of the latest message of a
    /// logical event.
    Duplicate,
    /// A later version of a logical event under the same event id, with
    /// other DHIS2 contributions.
    Edit,
    /// A later version of a logical event under a new event id that names
    /// the old one in `replaces`; the old event is withdrawn.
    Replacement,
    /// A message that must end as a dead letter.
    Poison(PoisonClass),
}

impl Kind {
    /// Whether the message must end as a dead letter.
    pub const fn is_poison(self) -> bool {
        matches!(self, Self::Poison(_))
    }
}

/// Why a poison message fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PoisonClass {
    /// The body is not JSON.
    NotJson,
    /// Valid JSON that no mapping matches.
    NoMapping,
    /// JSON that a mapping matches but cannot map (e.g. an unknown facility).
    MappingError,
}

impl PoisonClass {
    /// Every class.
    pub const ALL: [Self; 3] = [Self::NotJson, Self::NoMapping, Self::MappingError];

    /// The dead-letter reason the message ends with: `not_json`, or the
    /// [`MapError::reason`] (`no_mapping`, `mapping_error`).
    pub const fn reason(self) -> &'static str {
        match self {
            Self::NotJson => "not_json",
            Self::NoMapping => "no_mapping",
            Self::MappingError => "mapping_error",
        }
    }

    fn from_reason(reason: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.reason() == reason)
    }
}

/// One message to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The source app (`cht`, `commcare`, `kobo`, `inhouse`): the routing
    /// key or HTTP path segment.
    pub source: String,
    /// The transport message id (AMQP `message_id`); a duplicate has the id
    /// of the message it repeats, every other message a fresh one.
    pub message_id: String,
    /// The payload bytes (JSON, except for [`PoisonClass::NotJson`]).
    pub body: Vec<u8>,
    /// What the message is.
    pub kind: Kind,
    /// The logical event id the mapping yields (`None` for poison).
    pub key: Option<String>,
    /// Publish order: [`BASE_TIMESTAMP`] plus the message's index, in
    /// seconds, strictly increasing.
    pub timestamp: u64,
}

/// The messages of a workload, in publish order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Workload {
    /// The messages, in publish order.
    pub messages: Vec<Message>,
}

impl Workload {
    /// How many messages are of `kind`.
    pub fn count(&self, kind: Kind) -> usize {
        self.messages.iter().filter(|m| m.kind == kind).count()
    }
}

/// The mix of a workload, as fractions of its number of messages; the rest
/// are originals.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Mix {
    /// Share of duplicates.
    pub duplicates: f64,
    /// Share of edits, replacements included.
    pub edits: f64,
    /// Share of poison messages, split evenly between the classes.
    pub poison: f64,
}

impl Default for Mix {
    fn default() -> Self {
        Self {
            duplicates: 0.1,
            edits: 0.1,
            poison: 0.0,
        }
    }
}

impl Mix {
    /// The number of originals, duplicates, edits and poison messages among
    /// `n` (each share rounded to the nearest whole message).
    pub fn counts(&self, n: usize) -> anyhow::Result<[usize; 4]> {
        for (name, f) in [
            ("duplicates", self.duplicates),
            ("edits", self.edits),
            ("poison", self.poison),
        ] {
            ensure!(
                f.is_finite() && (0.0..=1.0).contains(&f),
                "mix: `{name}` is {f}, not a fraction between 0 and 1"
            );
        }
        let count = |f: f64| (f * n as f64).round() as usize;
        let (d, e, p) = (
            count(self.duplicates),
            count(self.edits),
            count(self.poison),
        );
        let Some(o) = n.checked_sub(d + e + p) else {
            bail!("mix: {d} duplicates, {e} edits and {p} poison are more than {n} messages");
        };
        ensure!(
            o > 0 || d + e == 0,
            "mix: {n} messages leave no original for {d} duplicates and {e} edits"
        );
        Ok([o, d, e, p])
    }
}

/// The shipped mapping packs (`mappings/packs` of this repository).
pub fn packs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../mappings/packs")
}

/// Loads the mappings of `packs_dir` as [`generate`] and the tests use them:
/// the public test pseudonym key, no FHIR validation of live events.
pub fn load_mappings(packs_dir: &Path) -> anyhow::Result<MappingSet> {
    let options = LoadOptions {
        pseudonym_key: Some(PseudonymKey::for_tests()),
        validate_fhir: false,
        ..LoadOptions::default()
    };
    MappingSet::load_dir(packs_dir, options)
        .with_context(|| format!("loading mappings from {}", packs_dir.display()))
}

/// Generates `n` messages from the packs under `packs_dir`, deterministic
/// for a given `seed`.
pub fn generate(packs_dir: &Path, n: usize, seed: u64, mix: Mix) -> anyhow::Result<Workload> {
    generate_with(&load_mappings(packs_dir)?, n, seed, mix)
}

/// [`generate`] with mappings already loaded (see [`load_mappings`]); the
/// packs are the folders of their files.
pub fn generate_with(
    mappings: &MappingSet,
    n: usize,
    seed: u64,
    mix: Mix,
) -> anyhow::Result<Workload> {
    let [o, d, e, p] = mix.counts(n)?;
    let catalog = Catalog::load(mappings)?;
    ensure!(
        o == 0 || !catalog.packs.is_empty(),
        "no pack has a fixture that maps successfully"
    );
    let mut g = Generator {
        catalog: &catalog,
        rng: Rng(seed),
        messages: Vec::with_capacity(n),
        events: Vec::new(),
        live: Vec::new(),
        ids: HashSet::new(),
        records: HashSet::new(),
    };
    for slot in g.plan([o, d, e, p]) {
        match slot {
            Slot::Original => g.original()?,
            Slot::Duplicate => g.duplicate()?,
            Slot::Edit => g.edit()?,
            Slot::Poison => g.poison()?,
        }
    }
    Ok(Workload {
        messages: g.messages,
    })
}

/// One DHIS2 aggregate data value: what a total is kept per.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TotalKey {
    /// Data element UID or `code:CODE`.
    pub data_element: String,
    /// DHIS2 period id.
    pub period: String,
    /// Org unit UID or `code:CODE`.
    pub org_unit: String,
    /// Category option combo UID or `code:CODE`.
    pub category_option_combo: String,
    /// Attribute option combo UID or `code:CODE`.
    pub attribute_option_combo: String,
}

/// What a store holds once every message of a workload is in.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Expected {
    /// The final live version of each logical event, by source and event id.
    pub events: BTreeMap<(String, String), MappedEvent>,
    /// Events withdrawn by a later message's `replaces`, by source and id.
    pub withdrawn: BTreeSet<(String, String)>,
    /// DHIS2 totals of the live events: for `count`, the number of
    /// contributions; `sum`, their sum; `min`/`max`, the extreme value;
    /// `last`, the value of the latest by date then event id.
    pub totals: BTreeMap<TotalKey, f64>,
    /// Dead letters: messages that are not JSON or do not map.
    pub poison: usize,
}

/// Why a message ends as a dead letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// `not_json`, or the [`MapError::reason`].
    pub reason: &'static str,
    /// The parser's or mapping engine's message.
    pub message: String,
}

/// Maps one message as the pipeline does: parse the body, then
/// [`MappingSet::map`] with the message id.
pub fn map_message(message: &Message, mappings: &MappingSet) -> Result<MappedEvent, DeadLetter> {
    let payload: Value = serde_json::from_slice(&message.body).map_err(|e| DeadLetter {
        reason: PoisonClass::NotJson.reason(),
        message: e.to_string(),
    })?;
    let event = Event {
        source: message.source.clone(),
        message_id: Some(message.message_id.clone()),
        payload: Arc::new(payload),
    };
    mappings.map(&event).map_err(|e| DeadLetter {
        reason: e.reason(),
        message: e.to_string(),
    })
}

/// Works out what a store must hold after taking in `workload` in order:
/// each message is mapped; the last published version of a logical event
/// is its final one; an event named by a later message's `replaces` is
/// withdrawn (and stays so). Fails when a message does not end as its
/// [`Kind`] says (a poison message that maps, or another that does not, or
/// an event id other than its `key`), since the workload then does not fit
/// `mappings`.
pub fn expected(workload: &Workload, mappings: &MappingSet) -> anyhow::Result<Expected> {
    let mut out = Expected::default();
    for (i, message) in workload.messages.iter().enumerate() {
        let label = || {
            format!(
                "message {i} ({:?}, source `{}`, id {})",
                message.kind, message.source, message.message_id
            )
        };
        match map_message(message, mappings) {
            Err(dead) => {
                out.poison += 1;
                match message.kind {
                    Kind::Poison(class) if class.reason() == dead.reason => {}
                    _ => bail!("{} ends as a dead letter: {}", label(), dead.message),
                }
            }
            Ok(mapped) => {
                ensure!(!message.kind.is_poison(), "{} maps", label());
                if let Some(key) = &message.key {
                    ensure!(
                        *key == mapped.event_id,
                        "{} maps to event id {}, not {key}",
                        label(),
                        mapped.event_id
                    );
                }
                if let Some(old) = &mapped.replaces {
                    let old = (message.source.clone(), old.clone());
                    out.events.remove(&old);
                    out.withdrawn.insert(old);
                }
                let key = (message.source.clone(), mapped.event_id.clone());
                if !out.withdrawn.contains(&key) {
                    out.events.insert(key, mapped);
                }
            }
        }
    }
    out.totals = totals(out.events.values())?;
    Ok(out)
}

/// The DHIS2 totals of `events`' contributions.
pub fn totals<'a>(
    events: impl IntoIterator<Item = &'a MappedEvent>,
) -> anyhow::Result<BTreeMap<TotalKey, f64>> {
    struct Acc<'a> {
        aggregation: Aggregation,
        value: f64,
        latest: (&'a str, &'a str),
    }
    let mut accs: BTreeMap<TotalKey, Acc<'a>> = BTreeMap::new();
    for event in events {
        for c in &event.dhis2 {
            let key = TotalKey {
                data_element: c.data_element.clone(),
                period: c.period.clone(),
                org_unit: c.org_unit.clone(),
                category_option_combo: c.category_option_combo.clone(),
                attribute_option_combo: c.attribute_option_combo.clone(),
            };
            let value = match c.aggregation {
                // Each event counts one, whatever its value says.
                Aggregation::Count => 1.0,
                _ => number(&c.value).with_context(|| {
                    format!(
                        "event {} rule `{}`: value {} is not a number",
                        event.event_id, c.rule, c.value
                    )
                })?,
            };
            let latest = (c.date.as_str(), event.event_id.as_str());
            let Some(acc) = accs.get_mut(&key) else {
                accs.insert(
                    key,
                    Acc {
                        aggregation: c.aggregation,
                        value,
                        latest,
                    },
                );
                continue;
            };
            ensure!(
                acc.aggregation == c.aggregation,
                "event {} rule `{}`: {:?} where other events use {:?} for {key:?}",
                event.event_id,
                c.rule,
                c.aggregation,
                acc.aggregation
            );
            match c.aggregation {
                Aggregation::Count | Aggregation::Sum => acc.value += value,
                Aggregation::Min => acc.value = acc.value.min(value),
                Aggregation::Max => acc.value = acc.value.max(value),
                Aggregation::Last => {
                    if latest > acc.latest {
                        acc.value = value;
                        acc.latest = latest;
                    }
                }
            }
        }
    }
    Ok(accs.into_iter().map(|(k, a)| (k, a.value)).collect())
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// Generation

/// splitmix64: small, fast, and the same sequence everywhere.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`; `n` must not be 0.
    fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    fn chance(&mut self, p: f64) -> bool {
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    /// A random (version 4 shaped) UUID.
    fn uuid(&mut self) -> String {
        let a = (self.next_u64() & 0xFFFF_FFFF_FFFF_0FFF) | 0x4000;
        let b = (self.next_u64() & 0x3FFF_FFFF_FFFF_FFFF) | 0x8000_0000_0000_0000;
        format!(
            "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xFFFF,
            a & 0xFFFF,
            b >> 48,
            b & 0xFFFF_FFFF_FFFF
        )
    }
}

/// The apps whose payloads the generator knows how to rewrite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum App {
    Cht,
    CommCare,
    Kobo,
    Inhouse,
}

impl App {
    fn for_source(source: &str) -> Option<Self> {
        match source {
            "cht" => Some(Self::Cht),
            "commcare" => Some(Self::CommCare),
            "kobo" => Some(Self::Kobo),
            "inhouse" => Some(Self::Inhouse),
            _ => None,
        }
    }

    /// The `facilities.csv` column the mapping looks the facility up by.
    const fn facility_column(self) -> &'static str {
        match self {
            Self::Cht => "cht_place_id",
            Self::CommCare | Self::Inhouse => "facility_code",
            Self::Kobo => "kobo_facility",
        }
    }

    /// Whether the mapping declares `replaces`.
    const fn has_replaces(self) -> bool {
        matches!(self, Self::Cht | Self::Kobo)
    }

    /// Writes the event id where the mapping's `event_id` reads it (and the
    /// app's other copies of it); `record` is Kobo's numeric `_id`, kept
    /// across edits; `version` counts the edits.
    fn set_id(self, v: &mut Value, id: &str, record: u64, version: u32) -> anyhow::Result<()> {
        match self {
            Self::Cht => {
                put(v, &["_id"], id.into())?;
                replace(v, &["fields", "meta", "instanceID"], format!("uuid:{id}"));
                let rev = format!("{}-{}", version + 1, id.replace('-', ""));
                replace(v, &["_rev"], rev);
            }
            Self::CommCare => {
                let old = get(v, &["id"]).and_then(Value::as_str).map(str::to_owned);
                put(v, &["id"], id.into())?;
                replace(v, &["form", "meta", "instanceID"], id);
                replace(v, &["metadata", "instanceID"], id);
                if let Some(old) = old.filter(|o| !o.is_empty())
                    && let Some(url) = slot(v, &["attachments", "form.xml", "url"])
                    && let Some(s) = url.as_str()
                {
                    *url = s.replace(&old, id).into();
                }
            }
            Self::Kobo => {
                put(v, &["meta/instanceID"], format!("uuid:{id}").into())?;
                replace(v, &["_uuid"], id);
                put(v, &["_id"], record.into())?;
            }
            Self::Inhouse => put(v, &["event_id"], id.into())?,
        }
        Ok(())
    }

    /// Names the event this one replaces, or clears the field.
    fn set_replaces(self, v: &mut Value, old: Option<&str>) -> anyhow::Result<()> {
        let deprecated = old.map_or_else(String::new, |o| format!("uuid:{o}"));
        match (self, old) {
            (Self::Cht, _) => put(v, &["fields", "meta", "deprecatedID"], deprecated.into()),
            (Self::Kobo, Some(_)) => put(v, &["meta/deprecatedID"], deprecated.into()),
            (Self::Kobo, None) => {
                if let Some(o) = v.as_object_mut() {
                    o.remove("meta/deprecatedID");
                }
                Ok(())
            }
            (Self::CommCare | Self::Inhouse, None) => Ok(()),
            (Self::CommCare | Self::Inhouse, Some(_)) => {
                bail!("{self:?} events cannot replace others")
            }
        }
    }

    fn set_facility(self, v: &mut Value, key: &str) -> anyhow::Result<()> {
        match self {
            Self::Cht => {
                put(v, &["contact", "parent", "_id"], key.into())?;
                let path = ["fields", "inputs", "contact", "parent", "parent", "_id"];
                replace(v, &path, key);
                Ok(())
            }
            Self::CommCare => put(v, &["form", "session", "facility_code"], key.into()),
            Self::Kobo => put(v, &["facility/facility_code"], key.into()),
            Self::Inhouse => put(v, &["facility_code"], key.into()),
        }
    }

    /// Moves the event's date (and the timestamps that go with it) `days`
    /// later.
    fn shift_date(self, v: &mut Value, days: u64) -> anyhow::Result<()> {
        match self {
            Self::Cht => {
                let at = get(v, &["reported_date"])
                    .and_then(Value::as_u64)
                    .context("cht event without a numeric `reported_date`")?;
                put(v, &["reported_date"], (at + days * 86_400_000).into())
            }
            Self::CommCare => {
                shift(v, &["form", "vaccination", "vaccination_date"], days, true)?;
                let times: [&[&str]; 4] = [
                    &["form", "meta", "timeStart"],
                    &["form", "meta", "timeEnd"],
                    &["metadata", "timeStart"],
                    &["metadata", "timeEnd"],
                ];
                for path in times {
                    shift(v, path, days, false)?;
                }
                Ok(())
            }
            Self::Kobo => {
                let test = shift(v, &["rdt/test_date"], days, false)?;
                let today = shift(v, &["today"], days, false)?;
                ensure!(
                    test || today,
                    "kobo event without `rdt/test_date` or `today`"
                );
                Ok(())
            }
            Self::Inhouse => {
                shift(v, &["occurred_at"], days, true)?;
                shift(v, &["recorded_at"], days, false)?;
                Ok(())
            }
        }
    }

    /// What an edit changes besides facility and date.
    fn revise(self, v: &mut Value) {
        // An invalid RDT contributes nothing to DHIS2: its edit is the
        // repeated test, negative, so that the edit changes the totals.
        if self == Self::Kobo
            && let Some(r) = slot(v, &["rdt/rdt_result"])
            && r.as_str() == Some("invalid")
        {
            *r = "negative".into();
        }
    }

    /// Makes a valid event into one that no mapping of this app matches:
    /// another form or event type.
    fn other_form(self, v: &mut Value) -> anyhow::Result<()> {
        match self {
            Self::Cht => put(v, &["form"], "delivery".into()),
            Self::CommCare => put(
                v,
                &["form", "@xmlns"],
                "http://openrosa.org/formdesigner/00000000-0000-4000-8000-000000000000".into(),
            ),
            Self::Kobo => {
                if let Some(o) = v.as_object_mut() {
                    o.remove("rdt/rdt_result");
                }
                Ok(())
            }
            Self::Inhouse => put(v, &["event_type"], "child_registration".into()),
        }
    }
}

fn get<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |cur, key| cur.get(*key))
}

fn slot<'a>(v: &'a mut Value, path: &[&str]) -> Option<&'a mut Value> {
    let mut cur = v;
    for key in path {
        cur = cur.as_object_mut()?.get_mut(*key)?;
    }
    Some(cur)
}

/// Sets `path`, whose parent object must exist.
fn put(v: &mut Value, path: &[&str], new: Value) -> anyhow::Result<()> {
    let (last, parents) = path.split_last().context("empty path")?;
    let parent = slot(v, parents)
        .and_then(Value::as_object_mut)
        .with_context(|| format!("no object at `{}`", parents.join(".")))?;
    parent.insert((*last).to_owned(), new);
    Ok(())
}

/// Sets `path` if it is there.
fn replace(v: &mut Value, path: &[&str], new: impl Into<Value>) {
    if let Some(s) = slot(v, path) {
        *s = new.into();
    }
}

/// Moves the date at the start of the text at `path` (`YYYY-MM-DD...`)
/// `days` later; whether it was there.
fn shift(v: &mut Value, path: &[&str], days: u64, required: bool) -> anyhow::Result<bool> {
    let Some(s) = slot(v, path) else {
        ensure!(!required, "no `{}`", path.join("."));
        return Ok(false);
    };
    let Some(text) = s.as_str() else {
        ensure!(!required, "`{}` is not text", path.join("."));
        return Ok(false);
    };
    let (day, rest) = (text.get(..10), text.get(10..).unwrap_or_default());
    let date = day
        .and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
        .and_then(|d| d.checked_add_days(Days::new(days)));
    let Some(date) = date else {
        ensure!(!required, "`{}` does not start with a date", path.join("."));
        return Ok(false);
    };
    *s = format!("{}{rest}", date.format("%Y-%m-%d")).into();
    Ok(true)
}

/// A facility of a pack's `facilities.csv`.
#[derive(Debug)]
struct Facility {
    key: String,
    org_unit: String,
}

/// A pack the generator can make events of.
#[derive(Debug)]
struct Pack {
    app: App,
    source: String,
    facilities: Vec<Facility>,
    /// Fixtures that map successfully, without `replaces`.
    bases: Vec<Value>,
}

/// A payload that fails as `class`.
#[derive(Debug)]
struct PoisonTemplate {
    app: App,
    source: String,
    class: PoisonClass,
    payload: Value,
}

#[derive(Debug)]
struct Catalog {
    packs: Vec<Pack>,
    poison: Vec<PoisonTemplate>,
}

impl Catalog {
    /// Reads the fixtures and facilities of every pack (the folder of each
    /// mapping file) whose source the generator knows.
    fn load(mappings: &MappingSet) -> anyhow::Result<Self> {
        let mut dirs: BTreeMap<PathBuf, String> = BTreeMap::new();
        for m in mappings.mappings() {
            if let Some(dir) = m.file.parent() {
                dirs.entry(dir.to_path_buf())
                    .or_insert_with(|| m.source.clone());
            }
        }
        let mut catalog = Self {
            packs: Vec::new(),
            poison: Vec::new(),
        };
        for (dir, source) in dirs {
            let Some(app) = App::for_source(&source) else {
                continue;
            };
            catalog.load_pack(mappings, &dir, app, &source)?;
        }
        Ok(catalog)
    }

    fn load_pack(
        &mut self,
        mappings: &MappingSet,
        dir: &Path,
        app: App,
        source: &str,
    ) -> anyhow::Result<()> {
        let fixtures = dir.join("fixtures");
        if !fixtures.is_dir() {
            return Ok(());
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir(&fixtures)
            .with_context(|| format!("reading {}", fixtures.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                let name = p.to_string_lossy();
                name.ends_with(".json") && !name.ends_with(".expected.json")
            })
            .collect();
        files.sort();
        let mut bases = Vec::new();
        for file in files {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let mut payload: Value = serde_json::from_str(&text)
                .with_context(|| format!("parsing {}", file.display()))?;
            let expected = file.with_extension("expected.json").is_file();
            match (probe(mappings, source, &payload), expected) {
                (Ok(_), true) => {
                    app.set_replaces(&mut payload, None)?;
                    bases.push(payload);
                }
                (Err(e), true) => bail!(
                    "{} has an expected output but does not map: {e}",
                    file.display()
                ),
                (Err(e), false) => self.add_poison(app, source, e.reason(), payload),
                (Ok(_), false) => {}
            }
        }
        // More poison from each base: another form, an unknown facility.
        for base in &bases {
            let mut other = base.clone();
            app.other_form(&mut other)?;
            let mut unknown = base.clone();
            app.set_facility(&mut unknown, "kiungo-workload-unknown-facility")?;
            for payload in [other, unknown] {
                if let Err(e) = probe(mappings, source, &payload) {
                    self.add_poison(app, source, e.reason(), payload);
                }
            }
        }
        if bases.is_empty() {
            return Ok(());
        }
        let facilities = read_facilities(&dir.join("facilities.csv"), app.facility_column())?;
        ensure!(
            !facilities.is_empty(),
            "{}: no facilities",
            dir.join("facilities.csv").display()
        );
        self.packs.push(Pack {
            app,
            source: source.to_owned(),
            facilities,
            bases,
        });
        Ok(())
    }

    fn add_poison(&mut self, app: App, source: &str, reason: &str, payload: Value) {
        // Only failures the workload names a class for (not, say, an
        // ambiguous match).
        if let Some(class) = PoisonClass::from_reason(reason) {
            self.poison.push(PoisonTemplate {
                app,
                source: source.to_owned(),
                class,
                payload,
            });
        }
    }
}

fn probe(mappings: &MappingSet, source: &str, payload: &Value) -> Result<MappedEvent, MapError> {
    mappings.map(&Event {
        source: source.to_owned(),
        message_id: Some("kiungo-workload-probe".into()),
        payload: Arc::new(payload.clone()),
    })
}

fn read_facilities(file: &Path, key_column: &str) -> anyhow::Result<Vec<Facility>> {
    let mut reader =
        csv::Reader::from_path(file).with_context(|| format!("reading {}", file.display()))?;
    let headers = reader.headers()?.clone();
    let column = |name: &str| {
        headers
            .iter()
            .position(|h| h.trim() == name)
            .with_context(|| format!("{}: no column `{name}`", file.display()))
    };
    let (key, org_unit) = (column(key_column)?, column("org_unit")?);
    let mut facilities = Vec::new();
    for row in reader.records() {
        let row = row.with_context(|| format!("reading {}", file.display()))?;
        if let (Some(k), Some(o)) = (row.get(key), row.get(org_unit)) {
            facilities.push(Facility {
                key: k.trim().to_owned(),
                org_unit: o.trim().to_owned(),
            });
        }
    }
    Ok(facilities)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Original,
    Duplicate,
    Edit,
    Poison,
}

/// What varies between the versions of the events made from one fixture.
#[derive(Debug, Clone, Copy)]
struct Variant {
    facility: usize,
    day_offset: u64,
    version: u32,
}

/// A logical event: one fixture, one id (a replacement makes a new one).
#[derive(Debug)]
struct Logical {
    pack: usize,
    base: usize,
    id: String,
    record: u64,
    variant: Variant,
    /// `(facility, day_offset)` of every version so far: a store takes a
    /// version whose bytes it has seen before for a stale re-delivery, so
    /// no edit may repeat one.
    seen: Vec<(usize, u64)>,
    /// Index of its latest message.
    last: usize,
    /// The event it replaced, if it is a replacement: its edits name it
    /// too, as the apps' documents keep `deprecatedID`. (An edit that
    /// dropped it, arriving before the replacement itself, would leave the
    /// two events unrelated until the replacement comes: both live, both
    /// sent, at once.)
    replaces: Option<String>,
}

struct Generator<'a> {
    catalog: &'a Catalog,
    rng: Rng,
    messages: Vec<Message>,
    events: Vec<Logical>,
    /// Indexes in `events` of the events not withdrawn.
    live: Vec<usize>,
    ids: HashSet<String>,
    records: HashSet<u64>,
}

impl Generator<'_> {
    /// The slots in publish order: shuffled, then every duplicate or edit
    /// that would come before the first original swapped with it.
    fn plan(&mut self, [o, d, e, p]: [usize; 4]) -> Vec<Slot> {
        let mut slots = Vec::with_capacity(o + d + e + p);
        for (slot, count) in [
            (Slot::Original, o),
            (Slot::Duplicate, d),
            (Slot::Edit, e),
            (Slot::Poison, p),
        ] {
            slots.extend(std::iter::repeat_n(slot, count));
        }
        for i in (1..slots.len()).rev() {
            let j = self.rng.below(i + 1);
            slots.swap(i, j);
        }
        let first = slots.iter().position(|s| *s == Slot::Original);
        if let Some(first) = first
            && let Some(dependent) = slots[..first]
                .iter()
                .position(|s| matches!(s, Slot::Duplicate | Slot::Edit))
        {
            slots.swap(dependent, first);
        }
        slots
    }

    fn fresh_id(&mut self) -> String {
        loop {
            let id = self.rng.uuid();
            if self.ids.insert(id.clone()) {
                return id;
            }
        }
    }

    /// A fresh 15-digit Kobo record number.
    fn fresh_record(&mut self) -> u64 {
        loop {
            let r = 100_000_000_000_000 + self.rng.next_u64() % 900_000_000_000_000;
            if self.records.insert(r) {
                return r;
            }
        }
    }

    fn push(
        &mut self,
        source: &str,
        message_id: String,
        body: Vec<u8>,
        kind: Kind,
        key: Option<String>,
    ) {
        let timestamp = BASE_TIMESTAMP + self.messages.len() as u64;
        self.messages.push(Message {
            source: source.to_owned(),
            message_id,
            body,
            kind,
            key,
            timestamp,
        });
    }

    /// The message of `event`'s current version; `replacement`: the
    /// message that replaces `event.replaces` (a new document).
    fn render(&self, event: &Logical, replacement: bool) -> anyhow::Result<Vec<u8>> {
        let pack = &self.catalog.packs[event.pack];
        let mut v = pack.bases[event.base].clone();
        let app = pack.app;
        let facility = &pack.facilities[event.variant.facility];
        let replaces = event.replaces.as_deref();
        // A replacement is a new document: its revision counts from 1.
        let revision = if replacement {
            0
        } else {
            event.variant.version
        };
        app.set_id(&mut v, &event.id, event.record, revision)?;
        app.set_facility(&mut v, &facility.key)?;
        app.shift_date(&mut v, event.variant.day_offset)?;
        if event.variant.version > 0 {
            app.revise(&mut v);
        }
        app.set_replaces(&mut v, replaces)?;
        Ok(serde_json::to_vec(&v)?)
    }

    fn new_event(&mut self) -> Logical {
        let pack = self.rng.below(self.catalog.packs.len());
        let p = &self.catalog.packs[pack];
        let (bases, facilities) = (p.bases.len(), p.facilities.len());
        let base = self.rng.below(bases);
        let variant = Variant {
            facility: self.rng.below(facilities),
            day_offset: self.rng.below(MAX_DAY_OFFSET as usize + 1) as u64,
            version: 0,
        };
        Logical {
            pack,
            base,
            id: self.fresh_id(),
            record: self.fresh_record(),
            variant,
            seen: vec![(variant.facility, variant.day_offset)],
            last: 0,
            replaces: None,
        }
    }

    fn original(&mut self) -> anyhow::Result<()> {
        let mut event = self.new_event();
        let body = self.render(&event, false)?;
        event.last = self.messages.len();
        let message_id = self.rng.uuid();
        let source = self.catalog.packs[event.pack].source.clone();
        self.push(
            &source,
            message_id,
            body,
            Kind::Original,
            Some(event.id.clone()),
        );
        self.live.push(self.events.len());
        self.events.push(event);
        Ok(())
    }

    fn duplicate(&mut self) -> anyhow::Result<()> {
        let i = self.pick_live()?;
        let last = self.events[i].last;
        let mut message = self.messages[last].clone();
        message.kind = Kind::Duplicate;
        message.timestamp = BASE_TIMESTAMP + self.messages.len() as u64;
        self.messages.push(message);
        Ok(())
    }

    /// The next version of event `i`: another org unit (half of the time
    /// another date too), or, if the pack has a single org unit, 35 days
    /// later; never the facility and date of an earlier version.
    fn edited(&mut self, i: usize) -> Variant {
        let (v, seen) = (self.events[i].variant, &self.events[i].seen);
        let facilities = &self.catalog.packs[self.events[i].pack].facilities;
        let current = &facilities[v.facility].org_unit;
        let others: Vec<usize> = (0..facilities.len())
            .filter(|&f| facilities[f].org_unit != *current)
            .collect();
        let mut next = Variant {
            version: v.version + 1,
            ..v
        };
        if others.is_empty() {
            next.day_offset += 35;
        } else {
            next.facility = others[self.rng.below(others.len())];
            if self.rng.chance(0.5) {
                next.day_offset = self.rng.below(MAX_DAY_OFFSET as usize + 1) as u64;
            }
            while seen.contains(&(next.facility, next.day_offset)) {
                next.day_offset += 1;
            }
        }
        next
    }

    fn edit(&mut self) -> anyhow::Result<()> {
        let at = self.rng.below(self.live.len().max(1));
        let i = *self.live.get(at).context("an edit before any original")?;
        let pack = self.events[i].pack;
        let variant = self.edited(i);
        let source = self.catalog.packs[pack].source.clone();
        let message_id = self.rng.uuid();
        if self.catalog.packs[pack].app.has_replaces() && self.rng.chance(REPLACEMENT_SHARE) {
            let old = &self.events[i];
            let mut event = Logical {
                pack,
                base: old.base,
                id: String::new(),
                record: old.record,
                variant,
                seen: vec![(variant.facility, variant.day_offset)],
                last: self.messages.len(),
                replaces: Some(old.id.clone()),
            };
            event.id = self.fresh_id();
            let body = self.render(&event, true)?;
            let key = Some(event.id.clone());
            self.push(&source, message_id, body, Kind::Replacement, key);
            self.live[at] = self.events.len();
            self.events.push(event);
        } else {
            self.events[i].variant = variant;
            self.events[i]
                .seen
                .push((variant.facility, variant.day_offset));
            self.events[i].last = self.messages.len();
            let body = self.render(&self.events[i], false)?;
            let key = Some(self.events[i].id.clone());
            self.push(&source, message_id, body, Kind::Edit, key);
        }
        Ok(())
    }

    fn pick_live(&mut self) -> anyhow::Result<usize> {
        let at = self.rng.below(self.live.len().max(1));
        self.live
            .get(at)
            .copied()
            .context("a duplicate before any original")
    }

    fn poison(&mut self) -> anyhow::Result<()> {
        let classes: Vec<PoisonClass> = PoisonClass::ALL
            .into_iter()
            .filter(|c| {
                (*c == PoisonClass::NotJson && !self.catalog.packs.is_empty())
                    || self.catalog.poison.iter().any(|t| t.class == *c)
            })
            .collect();
        ensure!(!classes.is_empty(), "the packs offer no poison");
        let class = classes[self.rng.below(classes.len())];
        let message_id = self.rng.uuid();
        let (source, body) = if class == PoisonClass::NotJson {
            let event = self.new_event();
            let source = self.catalog.packs[event.pack].source.clone();
            let body = if self.rng.chance(0.5) {
                // A truncated event: valid UTF-8, not valid JSON.
                let mut body = self.render(&event, false)?;
                body.truncate(body.len() / 2);
                body
            } else {
                let mut body = format!("not json {}", self.rng.uuid()).into_bytes();
                body.extend_from_slice(&[0xff, 0xfe, 0x00]);
                body
            };
            (source, body)
        } else {
            let templates: Vec<&PoisonTemplate> = self
                .catalog
                .poison
                .iter()
                .filter(|t| t.class == class)
                .collect();
            let t = templates[self.rng.below(templates.len())];
            let mut payload = t.payload.clone();
            let (id, record) = (self.fresh_id(), self.fresh_record());
            t.app.set_id(&mut payload, &id, record, 0)?;
            (t.source.clone(), serde_json::to_vec(&payload)?)
        };
        self.push(&source, message_id, body, Kind::Poison(class), None);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::OnceLock;

    use super::*;

    fn mappings() -> &'static MappingSet {
        static SET: OnceLock<MappingSet> = OnceLock::new();
        SET.get_or_init(|| load_mappings(&packs_dir()).expect("the shipped packs load"))
    }

    const WITH_POISON: Mix = Mix {
        duplicates: 0.1,
        edits: 0.15,
        poison: 0.06,
    };

    fn workload(n: usize, seed: u64, mix: Mix) -> Workload {
        generate_with(mappings(), n, seed, mix).expect("generate")
    }

    #[test]
    fn same_seed_same_bytes() {
        let a = generate(&packs_dir(), 400, 7, WITH_POISON).expect("generate");
        let b = workload(400, 7, WITH_POISON);
        assert_eq!(a, b);
        let c = workload(400, 8, WITH_POISON);
        assert_ne!(a.messages[0].body, c.messages[0].body);
        assert_ne!(a, c);
    }

    #[test]
    fn every_message_maps_as_its_kind_says() {
        let w = workload(2000, 1, WITH_POISON);
        for (i, m) in w.messages.iter().enumerate() {
            match (map_message(m, mappings()), m.kind) {
                (Ok(out), Kind::Poison(c)) => panic!("{i}: {c:?} maps: {}", out.event_id),
                (Ok(out), _) => assert_eq!(Some(&out.event_id), m.key.as_ref(), "{i}"),
                (Err(d), Kind::Poison(c)) => assert_eq!(d.reason, c.reason(), "{i}: {}", d.message),
                (Err(d), k) => panic!(
                    "{i} {k:?} from `{}` does not map: {}\n{}",
                    m.source,
                    d.message,
                    String::from_utf8_lossy(&m.body)
                ),
            }
        }
        let e = expected(&w, mappings()).expect("expected");
        assert_eq!(e.poison, 120);
    }

    #[test]
    fn the_mix_is_respected_and_the_order_holds() {
        let w = workload(2000, 42, WITH_POISON);
        assert_eq!(w.messages.len(), 2000);
        assert_eq!(w.count(Kind::Duplicate), 200);
        assert_eq!(w.count(Kind::Edit) + w.count(Kind::Replacement), 300);
        let poison: usize = PoisonClass::ALL
            .into_iter()
            .map(|c| w.count(Kind::Poison(c)))
            .sum();
        assert_eq!(poison, 120);
        assert_eq!(w.count(Kind::Original), 2000 - 200 - 300 - 120);
        for c in PoisonClass::ALL {
            assert!(w.count(Kind::Poison(c)) >= 20, "{c:?}");
        }
        let sources_of = |kind: Kind| -> BTreeSet<&str> {
            w.messages
                .iter()
                .filter(|m| m.kind == kind)
                .map(|m| m.source.as_str())
                .collect()
        };
        let all: BTreeSet<&str> = ["cht", "commcare", "inhouse", "kobo"].into();
        assert_eq!(sources_of(Kind::Original), all);
        assert_eq!(sources_of(Kind::Edit), all);
        assert_eq!(sources_of(Kind::Duplicate), all);
        assert_eq!(sources_of(Kind::Replacement), ["cht", "kobo"].into());

        let mut seen: HashMap<&str, &Message> = HashMap::new();
        let mut keys: HashSet<&str> = HashSet::new();
        let mut bodies: HashMap<(&String, &Vec<u8>), &String> = HashMap::new();
        let mut previous = None;
        for (i, m) in w.messages.iter().enumerate() {
            assert!(previous < Some(m.timestamp), "{i}: timestamps increase");
            previous = Some(m.timestamp);
            match m.kind {
                Kind::Duplicate => {
                    let first = seen
                        .get(m.message_id.as_str())
                        .expect("duplicate of an earlier message");
                    assert_eq!(
                        (&first.source, &first.body, &first.key),
                        (&m.source, &m.body, &m.key)
                    );
                    assert!(!first.kind.is_poison());
                }
                _ => assert!(
                    seen.insert(&m.message_id, m).is_none(),
                    "{i}: message id reused"
                ),
            }
            if let Some(key) = &m.key {
                // A store takes bytes it has seen for an event id before
                // for a stale re-delivery: only duplicates repeat them.
                let first = bodies.entry((key, &m.body)).or_insert(&m.message_id);
                assert_eq!(
                    *first, &m.message_id,
                    "{i}: an edit repeats an earlier version"
                );
            }
            let key = m.key.as_deref();
            match m.kind {
                Kind::Original | Kind::Replacement => {
                    assert!(keys.insert(key.expect("key")), "{i}: event id reused")
                }
                Kind::Edit | Kind::Duplicate => {
                    assert!(keys.contains(key.expect("key")), "{i}: before its original")
                }
                Kind::Poison(_) => assert_eq!(key, None),
            }
        }
    }

    #[test]
    fn edits_change_the_totals() {
        let w = workload(2000, 3, Mix::default());
        let with_edits = expected(&w, mappings()).expect("expected");
        // The same workload as if no edit had been sent (nor a duplicate of one).
        let edited: HashSet<&str> = w
            .messages
            .iter()
            .filter(|m| matches!(m.kind, Kind::Edit | Kind::Replacement))
            .map(|m| m.message_id.as_str())
            .collect();
        let without = Workload {
            messages: w
                .messages
                .iter()
                .filter(|m| !edited.contains(m.message_id.as_str()))
                .cloned()
                .collect(),
        };
        let without_edits = expected(&without, mappings()).expect("expected");
        assert_ne!(with_edits.totals, without_edits.totals);
        // Edits move counts around; they neither add nor remove events, and
        // a replacement only swaps one for another.
        assert_eq!(with_edits.events.len(), without_edits.events.len());

        // Each edit changes its own event's contributions.
        let mut latest: HashMap<(String, String), MappedEvent> = HashMap::new();
        let mut changed = 0;
        for m in &w.messages {
            let out = map_message(m, mappings()).expect("maps");
            let key = (m.source.clone(), out.event_id.clone());
            let before = match m.kind {
                Kind::Edit => latest.get(&key),
                Kind::Replacement => {
                    let old = out.replaces.clone().expect("replaces");
                    latest.get(&(m.source.clone(), old))
                }
                _ => None,
            };
            if let Some(before) = before {
                assert_ne!(before.dhis2, out.dhis2, "{}", out.event_id);
                changed += 1;
            }
            latest.insert(key, out);
        }
        assert_eq!(changed, 200);
    }

    #[test]
    fn a_replacement_withdraws_the_old_event() {
        let w = workload(1000, 5, Mix::default());
        let e = expected(&w, mappings()).expect("expected");
        let mut replaced = 0;
        for m in w.messages.iter().filter(|m| m.kind == Kind::Replacement) {
            let out = map_message(m, mappings()).expect("maps");
            let old = (m.source.clone(), out.replaces.clone().expect("replaces"));
            assert!(e.withdrawn.contains(&old));
            assert!(!e.events.contains_key(&old));
            replaced += 1;
        }
        assert!(replaced > 10, "{replaced}");
        assert_eq!(e.withdrawn.len(), replaced);
        // Every event id of the workload is live or withdrawn, never both.
        let ids: BTreeSet<(String, String)> = w
            .messages
            .iter()
            .filter_map(|m| Some((m.source.clone(), m.key.clone()?)))
            .collect();
        assert_eq!(ids.len(), e.events.len() + e.withdrawn.len());
        assert!(
            e.events
                .keys()
                .all(|k| ids.contains(k) && !e.withdrawn.contains(k))
        );

        // One replacement on its own: the totals are the new version's only.
        let r = w
            .messages
            .iter()
            .position(|m| m.kind == Kind::Replacement && m.source == "kobo")
            .expect("a kobo replacement");
        let new = map_message(&w.messages[r], mappings()).expect("maps");
        let old_id = new.replaces.clone().expect("replaces");
        let old = w
            .messages
            .iter()
            .rposition(|m| m.key.as_deref() == Some(old_id.as_str()))
            .expect("the replaced event");
        assert!(old < r);
        let pair = Workload {
            messages: vec![w.messages[old].clone(), w.messages[r].clone()],
        };
        let e = expected(&pair, mappings()).expect("expected");
        assert_eq!(
            e.events.keys().map(|k| &k.1).collect::<Vec<_>>(),
            [&new.event_id]
        );
        assert_eq!(e.totals, totals([&new]).expect("totals"));
    }

    #[test]
    fn totals_add_up_the_live_contributions() {
        let w = workload(1000, 9, WITH_POISON);
        let e = expected(&w, mappings()).expect("expected");
        let contributions: usize = e.events.values().map(|m| m.dhis2.len()).sum();
        let total: f64 = e.totals.values().sum();
        assert!(contributions > 1000, "{contributions}");
        assert!((total - contributions as f64).abs() < 1e-9);
        // Spread over org units and periods, and duplicates count once.
        let org_units: BTreeSet<&str> = e.totals.keys().map(|k| k.org_unit.as_str()).collect();
        let periods: BTreeSet<&str> = e.totals.keys().map(|k| k.period.as_str()).collect();
        assert!(org_units.len() >= 4, "{org_units:?}");
        assert!(periods.len() >= 10, "{periods:?}");
        let live = w
            .messages
            .iter()
            .filter(|m| m.kind == Kind::Original)
            .count();
        assert_eq!(e.events.len(), live);
    }

    #[test]
    fn expected_refuses_a_mislabelled_message() {
        let mut w = workload(200, 11, WITH_POISON);
        let i = w
            .messages
            .iter()
            .position(|m| m.kind == Kind::Poison(PoisonClass::NoMapping))
            .expect("no-mapping poison");
        w.messages[i].kind = Kind::Poison(PoisonClass::MappingError);
        assert!(expected(&w, mappings()).is_err());
        w.messages[i].kind = Kind::Original;
        assert!(expected(&w, mappings()).is_err());
    }

    #[test]
    fn the_mix_is_checked() {
        assert_eq!(Mix::default().counts(0).expect("empty"), [0, 0, 0, 0]);
        assert_eq!(Mix::default().counts(3).expect("small"), [3, 0, 0, 0]);
        assert_eq!(workload(0, 1, Mix::default()), Workload::default());
        let too_much = Mix {
            duplicates: 0.6,
            edits: 0.5,
            poison: 0.0,
        };
        assert!(too_much.counts(100).is_err());
        let negative = Mix {
            poison: -0.1,
            ..Mix::default()
        };
        assert!(negative.counts(100).is_err());
        let no_original = Mix {
            duplicates: 0.5,
            edits: 0.5,
            poison: 0.0,
        };
        assert!(no_original.counts(10).is_err());
        let all_poison = Mix {
            duplicates: 0.0,
            edits: 0.0,
            poison: 1.0,
        };
        let w = workload(30, 2, all_poison);
        assert!(w.messages.iter().all(|m| m.kind.is_poison()));
        assert_eq!(expected(&w, mappings()).expect("expected").poison, 30);
    }

    #[test]
    fn generated_events_are_valid_fhir() {
        // The pipeline validates the FHIR of every live event: a generated
        // event that failed would be a dead letter nobody expected.
        let options = LoadOptions {
            pseudonym_key: Some(PseudonymKey::for_tests()),
            validate_fhir: true,
            ..LoadOptions::default()
        };
        let validating = MappingSet::load_dir(&packs_dir(), options).expect("packs load");
        let w = workload(400, 13, WITH_POISON);
        let strict = expected(&w, &validating).expect("every message ends as its kind says");
        assert_eq!(strict, expected(&w, mappings()).expect("expected"));
    }
}
