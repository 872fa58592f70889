//! A real HAProxy (Debian's `haproxy`) balancing TCP connections round-robin over some
//! backends, on a free port, stopped when dropped: the balancer a ClusterIP or a cloud load
//! balancer is, for tests of how clients spread over replicas.

use std::{
    net::{TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// A running HAProxy.
pub struct HaProxy {
    child: Child,
    /// Holds its configuration; removed with it.
    _dir: tempfile::TempDir,
    pub port: u16,
}

impl HaProxy {
    /// Starts HAProxy in TCP mode in front of `backends` (`host:port` each), round-robin per
    /// connection.
    pub fn start(backends: &[String]) -> HaProxy {
        let dir = tempfile::tempdir().expect("haproxy folder");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let servers: String = backends
            .iter()
            .enumerate()
            .map(|(i, b)| format!("  server r{i} {b}\n"))
            .collect();
        let config = dir.path().join("haproxy.cfg");
        std::fs::write(
            &config,
            format!(
                "global\n  maxconn 1000\n\ndefaults\n  mode tcp\n  timeout connect 2s\n  \
                 timeout client 120s\n  timeout server 120s\n\nfrontend grpc\n  \
                 bind 127.0.0.1:{port}\n  default_backend replicas\n\nbackend replicas\n  \
                 balance roundrobin\n{servers}"
            ),
        )
        .expect("haproxy.cfg");
        let child = Command::new(binary())
            .args(["-db", "-f"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("haproxy must be installed (Debian package haproxy; scripts/test installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "haproxy did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        HaProxy {
            child,
            _dir: dir,
            port,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

fn binary() -> &'static str {
    if std::path::Path::new("/usr/sbin/haproxy").exists() {
        "/usr/sbin/haproxy"
    } else {
        "haproxy"
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
