//! Command-line settings both binaries share: the database connection. The URL may come from a
//! file (a mounted secret) and is never printed with its password.

use clap::Args;

/// The embedded default: an SQLite file in the data folder.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://data/documents.db";

#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// Database: sqlite://PATH or postgres://USER:PASSWORD@HOST/DB [default:
    /// sqlite://data/documents.db].
    #[arg(long = "database-url", env = "DATABASE_URL", hide_env_values = true)]
    pub url: Option<String>,

    /// File holding the database URL (instead of DATABASE_URL), e.g. a mounted secret.
    #[arg(long = "database-url-file", env = "DATABASE_URL_FILE")]
    pub url_file: Option<String>,

    /// Apply the database migrations at start-up; false: only wait until another service (or an
    /// operator) has applied them, for a database role that may not change the schema.
    #[arg(
        long = "database-migrate",
        env = "DATABASE_MIGRATE",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub migrate: bool,

    /// Maximum database connections in the pool.
    #[arg(
        long = "database-max-connections",
        env = "DATABASE_MAX_CONNECTIONS",
        default_value_t = 10
    )]
    pub max_connections: u32,

    /// What DATABASE_URL reaches: `none` (PostgreSQL itself, or a session-mode pooler) or
    /// `transaction` (a transaction-mode pooler such as PgBouncer `pool_mode = transaction`:
    /// no named statements, each operation in a transaction of its own).
    #[arg(
        long = "database-pooler",
        env = "DATABASE_POOLER",
        value_enum,
        default_value = "none"
    )]
    pub pooler: Pooler,

    /// A direct session connection to PostgreSQL, beside a transaction-mode pooler: the change
    /// feed (LISTEN) and the migrations' lock need one. Without it behind such a pooler, the hit
    /// view reads the database and DATABASE_MIGRATE must be false.
    #[arg(
        long = "database-listen-url",
        env = "DATABASE_LISTEN_URL",
        hide_env_values = true
    )]
    pub listen_url: Option<String>,
}

/// What the database URL reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Pooler {
    // PostgreSQL itself, or a session-mode pooler. (Plain comments: documented variants would
    // turn every option's --help into the long layout.)
    None,
    // A transaction-mode pooler.
    Transaction,
}

impl DatabaseArgs {
    /// The connection topology for a service, checked: migrating at start-up through a
    /// transaction-mode pooler needs the direct session URL.
    pub fn serving_topology(&self) -> anyhow::Result<documents_store::Topology> {
        let topology = self.topology()?;
        if topology.transaction_pooler && self.migrate && topology.listen_url.is_none() {
            anyhow::bail!(
                "DATABASE_MIGRATE: migrations hold a session lock, which a transaction-mode \
                 pooler (DATABASE_POOLER=transaction) does not keep: set DATABASE_LISTEN_URL to a \
                 direct connection to PostgreSQL, or DATABASE_MIGRATE=false and migrate with a \
                 direct URL"
            );
        }
        Ok(topology)
    }

    /// The connection topology (the pooler, and the direct session URL).
    pub fn topology(&self) -> anyhow::Result<documents_store::Topology> {
        let listen_url = self.listen_url.clone().filter(|u| !u.trim().is_empty());
        if let Some(u) = &listen_url {
            crate::secrets::register_url_password(u);
            if !(u.starts_with("postgres://") || u.starts_with("postgresql://")) {
                anyhow::bail!(
                    "DATABASE_LISTEN_URL: {} is not a postgres:// URL",
                    redact_url(u)
                );
            }
        }
        Ok(documents_store::Topology {
            transaction_pooler: self.pooler == Pooler::Transaction,
            listen_url,
        })
    }

    /// The database URL: DATABASE_URL, else the content of DATABASE_URL_FILE, else the default.
    /// A store on this database, as configured (for the one-shot commands).
    pub async fn connect(
        &self,
        max_connections: u32,
    ) -> anyhow::Result<std::sync::Arc<dyn documents_store::DocumentStore>> {
        let url = self.url()?;
        documents_store::connect_with(&url, max_connections, &self.topology()?)
            .await
            .map_err(|e| anyhow::anyhow!("connecting to {}: {e}", redact_url(&url)))
    }

    pub fn url(&self) -> anyhow::Result<String> {
        let url = crate::security::secret(
            self.url.as_deref(),
            self.url_file.as_deref(),
            "DATABASE_URL",
        )?
        .unwrap_or_else(|| DEFAULT_DATABASE_URL.to_string());
        crate::secrets::register_url_password(&url);
        Ok(url)
    }
}

pub use documents_store::redact_url;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_hidden() {
        assert_eq!(
            redact_url("postgres://app:s3cret@db:5432/documents"),
            "postgres://app:***@db:5432/documents"
        );
        assert_eq!(
            redact_url("postgres://a:p@ss@db/d"),
            "postgres://a:***@db/d"
        );
        assert_eq!(redact_url("postgres://app@db/d"), "postgres://app@db/d");
        assert_eq!(redact_url("sqlite://data/x.db"), "sqlite://data/x.db");
        assert_eq!(redact_url("not a url"), "not a url");
    }

    #[test]
    fn the_url_comes_from_a_file_or_the_default() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("url");
        std::fs::write(&file, "postgres://u:p@h/d\n").unwrap();
        let args = |url: Option<&str>, file: Option<&str>| DatabaseArgs {
            url: url.map(String::from),
            url_file: file.map(String::from),
            migrate: true,
            max_connections: 1,
            pooler: Pooler::None,
            listen_url: None,
        };
        let f = file.to_str().unwrap();
        assert_eq!(args(None, Some(f)).url().unwrap(), "postgres://u:p@h/d");
        assert_eq!(args(None, None).url().unwrap(), DEFAULT_DATABASE_URL);
        assert!(args(Some("sqlite://x"), Some(f)).url().is_err());
    }
}
