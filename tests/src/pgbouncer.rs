//! A real PgBouncer (Debian's `pgbouncer` 1.18) in front of the test PostgreSQL server, on a
//! free port with its own folder, stopped when dropped. Standard library only: the store's
//! contract suite includes this file too (`#[path]`), to run the contract through the pooler.

use std::{
    net::{TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// A running PgBouncer.
pub struct PgBouncer {
    child: Child,
    dir: PathBuf,
    pub port: u16,
}

impl PgBouncer {
    /// Starts PgBouncer with `pool_mode` (`transaction`, `session`) in front of the PostgreSQL
    /// server at `server` (`host:port`), with `pool_size` server connections per database and
    /// user, trusting the users the tests use.
    pub fn start(server: &str, pool_mode: &str, pool_size: u32) -> PgBouncer {
        let (host, port) = server.rsplit_once(':').expect("host:port");
        let dir =
            std::env::temp_dir().join(format!("pgbouncer-{}-{}", std::process::id(), rand_port()));
        std::fs::create_dir_all(&dir).expect("pgbouncer folder");
        // PgBouncer refuses to run as root: it switches to `postgres`, which must read and write
        // its folder.
        let as_root = running_as_root();
        if as_root {
            let _ = Command::new("chown")
                .args(["-R", "postgres"])
                .arg(&dir)
                .status();
        }
        std::fs::write(
            dir.join("users.txt"),
            "\"postgres\" \"\"\n\"documents_provider\" \"provider\"\n\"documents_consumer\" \"consumer\"\n",
        )
        .expect("users file");
        for _ in 0..5 {
            let listen = rand_port();
            std::fs::write(
                dir.join("pgbouncer.ini"),
                format!(
                    "[databases]\n* = host={host} port={port}\n\n[pgbouncer]\n\
                     listen_addr = 127.0.0.1\nlisten_port = {listen}\nunix_socket_dir =\n\
                     auth_type = trust\nauth_file = {users}\npool_mode = {pool_mode}\n\
                     default_pool_size = {pool_size}\nmax_client_conn = 1000\n\
                     ignore_startup_parameters = extra_float_digits\n\
                     logfile = {log}\n",
                    users = dir.join("users.txt").display(),
                    log = dir.join("pgbouncer.log").display(),
                ),
            )
            .expect("pgbouncer.ini");
            let mut cmd = Command::new(binary());
            if as_root {
                cmd.args(["-u", "postgres"]);
            }
            let mut child = cmd
                .arg(dir.join("pgbouncer.ini"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("pgbouncer must be installed (Debian package pgbouncer)");
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if TcpStream::connect(("127.0.0.1", listen)).is_ok() {
                    return PgBouncer {
                        child,
                        dir,
                        port: listen,
                    };
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break; // the port was taken meanwhile: another one
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!(
            "pgbouncer did not start; log:\n{}",
            std::fs::read_to_string(dir.join("pgbouncer.log")).unwrap_or_default()
        );
    }

    /// `url` (a postgres:// URL to the server behind) through this PgBouncer instead.
    pub fn url(&self, url: &str) -> String {
        let (scheme, rest) = url.split_once("://").expect("a URL");
        let (userinfo, rest) = rest.rsplit_once('@').map_or(("", rest), |(u, r)| (u, r));
        let path = rest.find('/').map_or("", |i| &rest[i..]);
        let at = if userinfo.is_empty() { "" } else { "@" };
        format!("{scheme}://{userinfo}{at}127.0.0.1:{}{path}", self.port)
    }

    /// PgBouncer's own log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pgbouncer.log")).unwrap_or_default()
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Where the pgbouncer binary is: `PGBOUNCER` overrides.
fn binary() -> String {
    std::env::var("PGBOUNCER").unwrap_or_else(|_| {
        ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .unwrap_or("pgbouncer")
            .to_string()
    })
}

/// A port that was free a moment ago (PgBouncer cannot be told port 0; a taken port is retried).
fn rand_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}
