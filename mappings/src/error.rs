//! Errors of loading mappings and of mapping events.

use std::fmt;
use std::path::PathBuf;

/// A problem found while loading a mapping file, with its location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError {
    /// The mapping file (or table file) at fault.
    pub file: PathBuf,
    /// 1-based line of the offending node, when known.
    pub line: Option<u64>,
    /// 1-based column of the offending node, when known.
    pub column: Option<u64>,
    /// Dotted path of the field at fault, e.g. `fhir[1].resource.subject`.
    pub field: String,
    /// What is wrong, lowercase, without a trailing period.
    pub message: String,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        if self.field.is_empty() {
            write!(f, ": {}", self.message)
        } else {
            write!(f, ": {}: {}", self.field, self.message)
        }
    }
}

impl std::error::Error for LoadError {}

/// Where in a resource template a FHIR problem is: the element at fault,
/// or the object it is missing from (the rule when it cannot be told).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplatePlace {
    /// Dotted path in the mapping file, e.g. `fhir[2].resource.valueQuantity`.
    pub field: String,
    /// 1-based line: the element's key's.
    pub line: u64,
}

/// Every problem found while loading one or more mapping files.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LoadErrors(pub Vec<LoadError>);

impl fmt::Display for LoadErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for LoadErrors {}

/// Why one event could not be mapped. Every variant is permanent: mapping the
/// same event with the same mappings fails the same way, so the event is
/// parked with this reason rather than retried.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    /// No loaded mapping matches the event.
    #[error("no mapping matches event {event} from source `{source_app}`")]
    NoMapping {
        /// The event's source app.
        source_app: String,
        /// The message id, or `(no id)`.
        event: String,
    },
    /// More than one mapping matches the event.
    #[error("event {event} from source `{source_app}` matches several mappings: {}", mappings.join(", "))]
    Ambiguous {
        /// The event's source app.
        source_app: String,
        /// The message id, or `(no id)`.
        event: String,
        /// Ids of the matching mappings.
        mappings: Vec<String>,
    },
    /// The event was routed to a mapping that is not loaded, or that is
    /// for another source.
    #[error("event {event} from source `{source_app}` is routed to mapping `{mapping}`, {}", match other_source {
        Some(other) => format!("which is for source `{other}`"),
        None => "which is not loaded".to_owned(),
    })]
    UnknownMapping {
        /// The mapping id the route named.
        mapping: String,
        /// The event's source app.
        source_app: String,
        /// The message id, or `(no id)`.
        event: String,
        /// The source of the mapping, when it exists for another source.
        other_source: Option<String>,
    },
    /// The event carries no id: the mapping has no `event_id` expression and
    /// the message no id.
    #[error("mapping `{mapping}`: event has no id (no `event_id` expression and no message id)")]
    NoEventId {
        /// The mapping id.
        mapping: String,
    },
    /// An expression failed, or produced a value of the wrong kind.
    #[error("mapping `{mapping}` field `{field}` (line {line}), event {event}: {message}")]
    Field {
        /// The mapping id.
        mapping: String,
        /// Dotted path of the field in the mapping file.
        field: String,
        /// Line of the field in the mapping file.
        line: u64,
        /// The event id, or the message id before the event id is known.
        event: String,
        /// What went wrong, without the event's values.
        message: String,
        /// The event's values the message leaves out (a lookup key that
        /// was not found): for operators only, never in the message. Boxed,
        /// to keep the error small on the happy path.
        values: Box<[String]>,
    },
    /// The mapping refuses the event on purpose: an `assert` that does not
    /// hold or a `fail('reason')`, with the mapping author's reason.
    #[error("mapping `{mapping}` field `{field}` (line {line}), event {event}: refused: {reason}")]
    Refused {
        /// The mapping id.
        mapping: String,
        /// Dotted path of the assertion or expression in the mapping file.
        field: String,
        /// Line of that field in the mapping file.
        line: u64,
        /// The event id, or the message id before the event id is known.
        event: String,
        /// The mapping author's reason: literal text, never the event's
        /// values.
        reason: String,
    },
    /// A produced FHIR resource does not validate.
    #[error(
        "mapping `{mapping}` resource `{resource}` ({file}, line {line}), event {event}: {message}"
    )]
    InvalidFhir {
        /// The mapping id.
        mapping: String,
        /// The name of the resource in the mapping.
        resource: Box<str>,
        /// The file of the resource's rule (a shared file's for an included
        /// rule).
        file: Box<str>,
        /// The line of the resource's rule.
        line: u64,
        /// The template node the problem is in; not in the message (load
        /// errors put it in front). Boxed, to keep the error small.
        at: Box<TemplatePlace>,
        /// The event id.
        event: String,
        /// The checker's message: the FHIR path, what was found and what was
        /// expected, never values.
        message: Box<str>,
    },
}

impl MapError {
    /// The event's values this error's message leaves out, for operators
    /// (`kiungo dlq show`, the admin API's payload route) and for mapping
    /// authors' local tools; never for logs, reasons or status messages.
    pub fn values(&self) -> &[String] {
        match self {
            Self::Field { values, .. } => values,
            _ => &[],
        }
    }

    /// The message followed by the values it leaves out, for a mapping
    /// author's terminal (`kiungo map`, `kiungo mappings test`).
    pub fn with_values(&self) -> String {
        match self.values() {
            [] => self.to_string(),
            values => format!("{self} (values: {})", values.join("; ")),
        }
    }

    /// Mapping errors are never worth retrying as they are: the event needs
    /// a fixed mapping or a fixed payload.
    pub const fn is_retryable(&self) -> bool {
        false
    }

    /// A short, stable reason code for metrics and dead-letter filters.
    pub const fn reason(&self) -> &'static str {
        match self {
            Self::NoMapping { .. } => "no_mapping",
            Self::UnknownMapping { .. } => "unknown_mapping",
            Self::Ambiguous { .. } => "ambiguous_mapping",
            Self::NoEventId { .. } => "no_event_id",
            Self::Field { .. } => "mapping_error",
            Self::Refused { .. } => "refused",
            Self::InvalidFhir { .. } => "invalid_fhir",
        }
    }
}

/// Why an expression failed: a message made without the event's values,
/// and the values kept apart.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Failure {
    /// What went wrong, without values.
    pub(crate) message: String,
    /// The values involved, for operators only.
    pub(crate) values: Vec<String>,
    /// Whether the mapping refused the event on purpose (`fail()`): the
    /// message is then the author's reason.
    pub(crate) refused: bool,
}

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Self {
            message,
            values: Vec::new(),
            refused: false,
        }
    }
}

impl From<&str> for Failure {
    fn from(message: &str) -> Self {
        message.to_owned().into()
    }
}

/// The source of an error raised by Kiungo's own expression functions:
/// it says the error's text was made without values, and carries the
/// values involved apart from it.
#[derive(Debug, Clone, Default)]
pub(crate) struct EventValues(pub(crate) Vec<String>);

impl fmt::Display for EventValues {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("event values withheld")
    }
}

impl std::error::Error for EventValues {}

/// The source of the error `fail('reason')` raises: the event is refused
/// on purpose, with the mapping author's reason.
#[derive(Debug, Clone)]
pub(crate) struct Refusal(pub(crate) String);

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refusal {}
