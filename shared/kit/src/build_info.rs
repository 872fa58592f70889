//! What this build is: the version, the source revision and the build date (stamped by the
//! kit's `build.rs`), for `--version`, the start-up log line and the `build_info` metric.

/// The workspace's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The source revision (12 hex digits), or `unknown`.
pub const REVISION: &str = env!("DOCUMENTS_REVISION");
/// The build date (`YYYY-MM-DD`: `SOURCE_DATE_EPOCH`, else the revision's commit date).
pub const BUILD_DATE: &str = env!("DOCUMENTS_BUILD_DATE");

/// What `--version` prints after the binary's name.
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (revision ",
    env!("DOCUMENTS_REVISION"),
    ", built ",
    env!("DOCUMENTS_BUILD_DATE"),
    ")"
);
