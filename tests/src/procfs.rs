//! What Linux's /proc says of a process: CPU time, resident memory, open file descriptors and
//! threads. The benchmark, the soak and the leak checks read their figures here.

use std::time::Instant;

fn status_kb(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
}

/// CPU seconds used by a process so far (user + system).
pub fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
    (field(11).unwrap_or(0.0) + field(12).unwrap_or(0.0)) / 100.0
}

/// Resets the peak resident memory counter of a process (Linux `clear_refs` 5).
pub fn reset_peak_rss(pid: u32) {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

/// Peak resident memory in MB (VmHWM) since start or the last [`reset_peak_rss`].
pub fn peak_rss_mb(pid: u32) -> f64 {
    status_kb(pid, "VmHWM:").map_or(0.0, |kb| kb / 1024.0)
}

/// Resident memory now, in MB (VmRSS).
pub fn rss_mb(pid: u32) -> f64 {
    status_kb(pid, "VmRSS:").map_or(0.0, |kb| kb / 1024.0)
}

/// Threads of the process.
pub fn threads(pid: u32) -> usize {
    status_kb(pid, "Threads:").map_or(0, |n| n as usize)
}

/// Open file descriptors of the process, and how many of them are sockets.
pub fn open_fds(pid: u32) -> (usize, usize) {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return (0, 0);
    };
    let mut all = 0;
    let mut sockets = 0;
    for entry in dir.flatten() {
        all += 1;
        if std::fs::read_link(entry.path())
            .is_ok_and(|t| t.to_string_lossy().starts_with("socket:"))
        {
            sockets += 1;
        }
    }
    (all, sockets)
}

/// Measures a process around `f`: (output, cores used, peak resident MB).
pub async fn measured<T>(pid: u32, f: impl std::future::Future<Output = T>) -> (T, f64, f64) {
    reset_peak_rss(pid);
    let (c0, t0) = (cpu_secs(pid), Instant::now());
    let out = f.await;
    let cores = (cpu_secs(pid) - c0) / t0.elapsed().as_secs_f64();
    (out, cores, peak_rss_mb(pid))
}
