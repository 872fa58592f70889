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
}

impl DatabaseArgs {
    /// The database URL: DATABASE_URL, else the content of DATABASE_URL_FILE, else the default.
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
        };
        let f = file.to_str().unwrap();
        assert_eq!(args(None, Some(f)).url().unwrap(), "postgres://u:p@h/d");
        assert_eq!(args(None, None).url().unwrap(), DEFAULT_DATABASE_URL);
        assert!(args(Some("sqlite://x"), Some(f)).url().is_err());
    }
}
