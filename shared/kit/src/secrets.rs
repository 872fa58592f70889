//! The process's secrets (tokens, passwords, keys) and the last line of defence that keeps them
//! in: every secret the configuration reads is registered here, and text that leaves the process
//! through a channel a third party's code may write into (a log line, an error answered to a
//! caller or stored in the database, a span's status, a panic message) is scrubbed of them.
//! The first line is that our own code never formats a secret (URLs that carry one redact
//! themselves; errors that could repeat a URL drop it), so the scrubber is what catches what
//! someone else's error text or debug line repeats.

use std::{borrow::Cow, sync::RwLock};

/// What a secret is replaced with.
pub const REDACTED: &str = "***";

/// Values shorter than this are not scrubbed: they would mangle ordinary text (a password such
/// as `provider` is a word of the logs). Such a secret is only as safe as the code that never
/// formats it, and weak anyway.
pub const MIN_SCRUBBED_LEN: usize = 12;

static SECRETS: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// Remembers `secret` so that [`scrub`] removes it from whatever leaves the process. Trimmed;
/// values shorter than [`MIN_SCRUBBED_LEN`] are ignored.
pub fn register(secret: &str) {
    let secret = secret.trim();
    if secret.len() < MIN_SCRUBBED_LEN {
        return;
    }
    let mut all = SECRETS.write().unwrap_or_else(|e| e.into_inner());
    if !all.iter().any(|s| s == secret) {
        all.push(secret.to_string());
        // Longest first, so a secret that contains another is replaced whole.
        all.sort_by_key(|s| std::cmp::Reverse(s.len()));
    }
}

/// Registers the password of a database URL (`scheme://user:password@host/...`), if it has one.
pub fn register_url_password(url: &str) {
    if let Some(password) = url
        .split_once("://")
        .and_then(|(_, rest)| rest.rsplit_once('@'))
        .and_then(|(userinfo, _)| userinfo.split_once(':'))
        .map(|(_, password)| password)
    {
        register(password);
        // A password with reserved characters appears percent-encoded in the URL and decoded
        // in what the driver sends: both forms are secret.
        if let Ok(decoded) = percent_decode(password) {
            register(&decoded);
        }
    }
}

/// Registers the body lines of a PEM file's private key (what a key looks like if printed).
pub fn register_pem(pem: &str) {
    for line in pem.lines() {
        if !line.starts_with("-----") {
            register(line);
        }
    }
}

/// `text` with every registered secret replaced by [`REDACTED`]; borrowed when there is none.
pub fn scrub(text: &str) -> Cow<'_, str> {
    let all = SECRETS.read().unwrap_or_else(|e| e.into_inner());
    if !all.iter().any(|s| text.contains(s.as_str())) {
        return Cow::Borrowed(text);
    }
    let mut out = text.to_string();
    for s in all.iter() {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), REDACTED);
        }
    }
    Cow::Owned(out)
}

fn percent_decode(s: &str) -> Result<String, ()> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3).ok_or(())?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| ())?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| ())
}

/// A log writer that scrubs each line of the secrets before passing it on.
pub struct ScrubbingWriter<W>(pub W);

impl<W: std::io::Write> std::io::Write for ScrubbingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // The formatter hands over one whole line per write.
        match std::str::from_utf8(buf) {
            Ok(text) => match scrub(text) {
                Cow::Borrowed(_) => self.0.write_all(buf),
                Cow::Owned(clean) => self.0.write_all(clean.as_bytes()),
            }?,
            Err(_) => self.0.write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// Makes [`ScrubbingWriter`]s around another writer maker's writers.
#[derive(Clone)]
pub struct Scrubbing<M>(pub M);

impl<'a, M: tracing_subscriber::fmt::MakeWriter<'a>> tracing_subscriber::fmt::MakeWriter<'a>
    for Scrubbing<M>
{
    type Writer = ScrubbingWriter<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        ScrubbingWriter(self.0.make_writer())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The registry is process-wide: this one test owns it (nextest runs each in its own process).
    #[test]
    fn registered_secrets_are_scrubbed_wherever_they_appear() {
        register("short");
        register("s3cret-token-0123456789");
        register_url_password("postgres://app:p%40ss-word-long-enough@db/documents");
        register_pem("-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49\n-----END PRIVATE KEY-----\n");
        assert_eq!(scrub("nothing here"), Cow::Borrowed("nothing here"));
        assert_eq!(
            scrub("a short word"),
            "a short word",
            "short values are left alone"
        );
        assert_eq!(
            scrub("GET /eod?api_token=s3cret-token-0123456789&x=1 failed"),
            "GET /eod?api_token=***&x=1 failed"
        );
        assert_eq!(
            scrub("password=p@ss-word-long-enough, url p%40ss-word-long-enough"),
            "password=***, url ***"
        );
        assert_eq!(scrub("key MIGHAgEAMBMGByqGSM49AgEGCCqGSM49"), "key ***");

        let mut out = Vec::new();
        let mut w = ScrubbingWriter(&mut out);
        std::io::Write::write_all(&mut w, b"token s3cret-token-0123456789\n").unwrap();
        assert_eq!(out, b"token ***\n");
    }
}
