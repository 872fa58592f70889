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

/// One of a process's sockets: `tcp`, `tcp6`, `udp`, `udp6`, `unix` or `other`, with its
/// addresses and state (hex, as the kernel gives it: 01 established, 0A listening) for IP ones.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Socket {
    pub family: String,
    pub local: String,
    pub remote: String,
    pub state: String,
}

impl Socket {
    fn port(addr: &str) -> &str {
        addr.rsplit(':').next().unwrap_or_default()
    }

    /// Whether it is a connection a client made to one of `listening`.
    pub fn accepted_on(&self, listening: &[Socket]) -> bool {
        self.state == "01"
            && listening
                .iter()
                .any(|l| l.family == self.family && Self::port(&l.local) == Self::port(&self.local))
    }
}

/// The process's sockets.
pub fn sockets(pid: u32) -> Vec<Socket> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|t| {
            let t = t.to_string_lossy().into_owned();
            Some(t.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    let addr = |a: &str| {
        let (host, port) = a.split_once(':').unwrap_or((a, "0"));
        let port = u16::from_str_radix(port, 16).unwrap_or(0);
        let ip = match u32::from_str_radix(host, 16) {
            Ok(v) if host.len() == 8 => std::net::Ipv4Addr::from(v.swap_bytes()).to_string(),
            _ => host.to_string(),
        };
        format!("{ip}:{port}")
    };
    let mut known = std::collections::HashMap::new();
    for table in ["tcp", "tcp6", "udp", "udp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 9 {
                let socket = Socket {
                    family: table.to_string(),
                    local: addr(f[1]),
                    remote: addr(f[2]),
                    state: f[3].to_string(),
                };
                known.insert(f[9].to_string(), socket);
            }
        }
    }
    let unix = std::fs::read_to_string(format!("/proc/{pid}/net/unix")).unwrap_or_default();
    let mut out: Vec<Socket> = inodes
        .iter()
        .map(|i| {
            known.get(i).cloned().unwrap_or_else(|| {
                let is_unix = unix
                    .lines()
                    .any(|l| l.split_whitespace().nth(6) == Some(i.as_str()));
                Socket {
                    family: if is_unix { "unix" } else { "other" }.into(),
                    local: String::new(),
                    remote: String::new(),
                    state: String::new(),
                }
            })
        })
        .collect();
    out.sort();
    out
}

/// The sockets the process opened itself: all but the connections clients made to its
/// listeners (those are the clients', bounded by the server's connection limit).
pub fn own_sockets(pid: u32) -> Vec<Socket> {
    let all = sockets(pid);
    let listening: Vec<Socket> = all.iter().filter(|s| s.state == "0A").cloned().collect();
    all.into_iter()
        .filter(|s| !s.accepted_on(&listening))
        .collect()
}

/// Measures a process around `f`: (output, cores used, peak resident MB).
pub async fn measured<T>(pid: u32, f: impl std::future::Future<Output = T>) -> (T, f64, f64) {
    reset_peak_rss(pid);
    let (c0, t0) = (cpu_secs(pid), Instant::now());
    let out = f.await;
    let cores = (cpu_secs(pid) - c0) / t0.elapsed().as_secs_f64();
    (out, cores, peak_rss_mb(pid))
}
