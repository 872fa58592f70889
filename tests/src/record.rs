//! Figures the reliability tests report. Each fault or bad-input test writes one [`Record`] as
//! JSON into `$RELIABILITY_RECORD_DIR` when that is set (`scripts/reliability` sets it), and the
//! `reliability-report` binary renders the folder as RELIABILITY.md.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What one test tried and what the system did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Record {
    /// Fault class: "database", "process", "upstream", "bad input".
    pub class: String,
    /// The fault or input tried.
    pub case: String,
    /// What the system did, in words.
    pub observed: String,
    /// Requests sent during the case.
    pub sent: usize,
    /// Answers by outcome ("OK" or the gRPC code).
    pub outcomes: BTreeMap<String, usize>,
    /// From the end of the fault until calls succeeded again.
    pub recovery_ms: Option<u64>,
    /// Rows the invariant checker read afterwards.
    pub rows_checked: Option<u64>,
    /// Other figures by name.
    pub figures: BTreeMap<String, String>,
    /// The test that produced the record: its path (`binary::test`, as nextest names it), with
    /// `::case` appended when the test writes one record per case. The report matches records
    /// to the test run's results by it.
    pub test: String,
}

impl Record {
    /// Writes the record if `RELIABILITY_RECORD_DIR` is set; otherwise does nothing.
    pub fn save(&self) {
        let Some(dir) = std::env::var_os("RELIABILITY_RECORD_DIR") else {
            return;
        };
        let dir = std::path::PathBuf::from(dir);
        std::fs::create_dir_all(&dir).expect("record folder");
        let name: String = self
            .test
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let body = serde_json::to_string_pretty(self).expect("record JSON");
        std::fs::write(dir.join(format!("{name}.json")), body).expect("write record");
    }
}
