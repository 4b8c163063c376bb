//! Store errors, classified as transient (retry the same work later) or
//! permanent (the work itself cannot be stored). Conflicts, the transient
//! errors of a lost race, are told apart: the same conflict again and
//! again is the work's own doing, and a caller stops retrying it.

/// A store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database said no, or could not be reached.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// Migrations failed at start.
    #[error("migrating the store schema: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The store URL names no supported database.
    #[error("store url `{0}`: expected sqlite:PATH or postgres://…")]
    UnsupportedUrl(String),
}

impl StoreError {
    /// Whether retrying the same operation later may succeed: the database
    /// was unreachable or busy, or a concurrent writer won a race (unique
    /// violation, serialization failure, deadlock). Anything else is a
    /// problem with the data or the schema and fails again.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Database(e) => is_transient(e),
            Self::Migrate(_) | Self::UnsupportedUrl(_) => false,
        }
    }

    /// Whether the failure is a lost race with a concurrent writer (unique
    /// violation, serialization failure, deadlock): transient, and cleared
    /// by a retry that sees the winner's rows. The same conflict again and
    /// again comes from the work itself (say, two rows of one event with
    /// one key), so callers retry it a few times only, then treat it as
    /// permanent.
    pub fn is_conflict(&self) -> bool {
        matches!(
            self.database_code().as_deref(),
            Some("40001" | "40P01" | "23505")
        ) && self.is_transient()
    }

    /// The database's error code (PostgreSQL SQLSTATE, SQLite extended
    /// result code), when the database answered with an error.
    pub fn database_code(&self) -> Option<String> {
        match self {
            Self::Database(sqlx::Error::Database(db)) => db.code().map(|c| c.into_owned()),
            _ => None,
        }
    }
}

fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => {
            let code = db.code();
            let code = code.as_deref().unwrap_or("");
            if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                // SQLite BUSY (5), LOCKED (6), I/O error (10), disk full
                // (13), cannot open (14), lock protocol (15), with their
                // extended codes: the machine's trouble, not the data's.
                return code
                    .parse::<u32>()
                    .is_ok_and(|c| matches!(c & 0xff, 5 | 6 | 10 | 13 | 14 | 15));
            }
            // PostgreSQL: serialization failure, deadlock, unique violation
            // (two writers inserted the same new event), connection
            // exceptions (08xxx), operator intervention such as an admin
            // shutdown (57P0x) or a statement timeout or cancel (57014,
            // e.g. behind a migration's lock), lock timeout (55P03),
            // read-only transaction (25006, a failover in progress),
            // insufficient resources (53xxx), system errors (58xxx). None
            // of these says anything about the data: parking it would
            // lose good events.
            matches!(
                code,
                "40001" | "40P01" | "23505" | "57014" | "55P03" | "25006"
            ) || code.starts_with("08")
                || code.starts_with("57P")
                || code.starts_with("53")
                || code.starts_with("58")
        }
        _ => false,
    }
}
