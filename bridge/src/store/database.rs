//! The PostgreSQL database a store URL names: `kiungo config check` finds
//! out whether it exists and, when it does not, creates it if the role may
//! (so `kiungo run` then works) or says exactly what to run. A server that
//! cannot be reached is not this module's concern (`kiungo run` says so).

use std::str::FromStr;
use std::time::Duration;

use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection};

/// What [`ensure_postgres_database`] found or did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseCheck {
    /// Not a PostgreSQL URL, the database exists, or the server could not
    /// be asked.
    Nothing,
    /// The database did not exist and was created.
    Created(String),
    /// The database does not exist and could not be created: the message
    /// says what to run.
    Missing(String),
}

/// SQLSTATE `invalid_catalog_name`: the database does not exist.
const NO_SUCH_DATABASE: &str = "3D000";

/// Checks the database `url` names, creating it when it is missing and
/// the role may. Messages name host, port, role and database, never the
/// password.
pub async fn ensure_postgres_database(url: &str) -> DatabaseCheck {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return DatabaseCheck::Nothing;
    }
    let Ok(options) = PgConnectOptions::from_str(url) else {
        return DatabaseCheck::Nothing;
    };
    let wait = Duration::from_secs(10);
    match tokio::time::timeout(wait, PgConnection::connect_with(&options)).await {
        Ok(Err(sqlx::Error::Database(e))) if e.code().as_deref() == Some(NO_SUCH_DATABASE) => {}
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
            return DatabaseCheck::Nothing;
        }
        _ => return DatabaseCheck::Nothing,
    }
    let name = options
        .get_database()
        .unwrap_or(options.get_username())
        .to_owned();
    let role = options.get_username().to_owned();
    let (host, port) = (options.get_host().to_owned(), options.get_port());
    let create = format!("CREATE DATABASE {}", quote_ident(&name));
    let maintenance = options.clone().database("postgres");
    let refusal = match tokio::time::timeout(wait, PgConnection::connect_with(&maintenance)).await {
        Ok(Ok(mut conn)) => {
            let done = sqlx::raw_sql(&create).execute(&mut conn).await;
            let _ = conn.close().await;
            match done {
                Ok(_) => {
                    return DatabaseCheck::Created(format!(
                        "database {} did not exist on {host}:{port}; created it (owner: role {})",
                        quote_ident(&name),
                        quote_ident(&role)
                    ));
                }
                Err(e) => short(&e),
            }
        }
        Ok(Err(e)) => short(&e),
        Err(_) => "no answer in 10 s".to_owned(),
    };
    DatabaseCheck::Missing(format!(
        "store.url: database {} does not exist on {host}:{port} and role {} could not create it ({refusal}); \
         as a role that may, run: psql -h {host} -p {port} -d postgres -c '{create} OWNER {}'",
        quote_ident(&name),
        quote_ident(&role),
        quote_ident(&role),
    ))
}

/// A PostgreSQL identifier in double quotes, inner quotes doubled.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The server's own message (no URL, so no password), else the error kind.
fn short(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(db) => db.message().to_owned(),
        _ => "could not connect to the postgres database".to_owned(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a panic is the failure report
mod tests {
    use super::*;

    fn admin_url() -> String {
        crate::store::scratch::postgres_admin_url()
    }

    fn with_db(url: &str, db: &str) -> String {
        let base = url.rsplit_once('/').map_or(url, |(b, _)| b);
        format!("{base}/{db}")
    }

    #[tokio::test]
    async fn a_missing_database_is_created_when_the_role_may() {
        let name = format!("kiungo_check_{}", uuid::Uuid::new_v4().simple());
        let url = with_db(&admin_url(), &name);
        match ensure_postgres_database(&url).await {
            DatabaseCheck::Created(m) => assert!(m.contains(&name), "{m}"),
            other => panic!("{other:?}"),
        }
        // It exists now: nothing more to say, and it can be opened.
        assert_eq!(ensure_postgres_database(&url).await, DatabaseCheck::Nothing);
        let mut conn = PgConnection::connect(&url).await.unwrap();
        sqlx::raw_sql("SELECT 1").execute(&mut conn).await.unwrap();
        conn.close().await.unwrap();
        let mut admin = PgConnection::connect(&admin_url()).await.unwrap();
        sqlx::raw_sql(&format!("DROP DATABASE {name}"))
            .execute(&mut admin)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_role_that_may_not_create_is_told_what_to_run() {
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let role = format!("kiungo_nocreate_{}", &suffix[..8]);
        let mut admin = PgConnection::connect(&admin_url()).await.unwrap();
        sqlx::raw_sql(&format!("CREATE ROLE {role} LOGIN NOCREATEDB"))
            .execute(&mut admin)
            .await
            .unwrap();
        let name = format!("kiungo_check_{suffix}");
        let options = PgConnectOptions::from_str(&admin_url()).unwrap();
        let url = format!(
            "postgres://{role}:secretpw@{}:{}/{name}",
            options.get_host(),
            options.get_port()
        );
        let found = ensure_postgres_database(&url).await;
        sqlx::raw_sql(&format!("DROP ROLE {role}"))
            .execute(&mut admin)
            .await
            .unwrap();
        let DatabaseCheck::Missing(m) = found else {
            panic!("{found:?}")
        };
        assert!(
            m.contains(&format!("CREATE DATABASE \"{name}\" OWNER \"{role}\"")),
            "{m}"
        );
        assert!(m.contains("psql -h"), "{m}");
        assert!(!m.contains("secretpw"), "{m}");
    }

    #[tokio::test]
    async fn sqlite_and_unreachable_servers_say_nothing() {
        assert_eq!(
            ensure_postgres_database("sqlite:k.db").await,
            DatabaseCheck::Nothing
        );
        assert_eq!(
            ensure_postgres_database("postgres://kiungo@127.0.0.1:1/kiungo").await,
            DatabaseCheck::Nothing
        );
    }
}
