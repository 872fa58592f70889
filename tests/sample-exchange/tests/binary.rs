//! The binary serves the sample exchange on the address it prints (and, being an integration
//! test of this package, makes `cargo test`/`cargo nextest run --workspace` build the binary the
//! end-to-end tests start).

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    process::{Command, Stdio},
};

#[test]
fn serves_its_stats_on_the_printed_address() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sample-exchange"))
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let addr = first
        .trim()
        .rsplit("http://")
        .next()
        .unwrap_or_else(|| panic!("no address in {first:?}"))
        .to_string();
    // Its health check says so too (and no, where nothing listens).
    let check = |listen: &str| {
        Command::new(env!("CARGO_BIN_EXE_sample-exchange"))
            .args(["--listen", listen, "--healthcheck"])
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(check(&addr));
    let nobody = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    assert!(!check(&nobody));
    let mut conn = TcpStream::connect(&addr).unwrap();
    conn.write_all(b"GET /_stats HTTP/1.0\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200"),
        "{answer}"
    );
    assert!(answer.contains("by_path"), "{answer}");
}
