//! The operations listener from a test: its address (from the daemon's log), plain HTTP/1.1
//! requests to it, and `/metrics` parsed by Prometheus's own Python client
//! (tests/verifiers/prom_parse.py).

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{Daemon, TestResult, run_json};

/// `[ops]` on an ephemeral loopback port, to append to a test config.
pub const OPS_TABLE: &str = "\n[ops]\nlisten = \"127.0.0.1:0\"\n";

/// The operations listener's address, read from the log line that announces it (text or JSON).
pub fn ops_addr(d: &Daemon) -> TestResult<SocketAddr> {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let found = d
            .log
            .lock()
            .map_err(|_| "log lock")?
            .iter()
            .filter(|l| l.contains("operations listener"))
            .find_map(|l| addr_in(l));
        if let Some(a) = found {
            return Ok(a);
        }
        if Instant::now() > until {
            return Err(format!("no operations listener in the log:\n{}", d.log_text()).into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The `addr` field of a text (`addr=…`) or JSON (`"addr":"…"`) log line.
pub fn addr_in(line: &str) -> Option<SocketAddr> {
    let rest = line
        .split("\"addr\":\"")
        .nth(1)
        .or_else(|| line.split("addr=").nth(1))?;
    rest.split(|c: char| c == '"' || c.is_whitespace())
        .next()?
        .parse()
        .ok()
}

/// One HTTP/1.1 request (`Connection: close`): status code, headers text and body.
pub fn http(addr: SocketAddr, method: &str, path: &str) -> TestResult<(u16, String, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    let (head, body) = answer.split_once("\r\n\r\n").ok_or("no end of headers")?;
    let code = head.split_whitespace().nth(1).ok_or("no status")?.parse()?;
    Ok((code, head.to_owned(), body.to_owned()))
}

/// `/metrics`, parsed by `prometheus_client`: `{families: {name: type}, samples: [...]}`.
pub fn scrape(addr: SocketAddr) -> TestResult<Value> {
    let (code, head, text) = http(addr, "GET", "/metrics")?;
    if code != 200 || !head.contains("text/plain; version=0.0.4") {
        return Err(format!("/metrics answered {code}: {head}").into());
    }
    run_json(
        "python3",
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/verifiers/prom_parse.py"),
        &json!({ "text": text }),
    )
}

/// The value of the sample `name` whose labels include every pair of `labels` (0 when none).
pub fn sample(scraped: &Value, name: &str, labels: &[(&str, &str)]) -> f64 {
    scraped["samples"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["name"] == name)
        .filter(|s| labels.iter().all(|(k, v)| s["labels"][*k] == *v))
        .filter_map(|s| s["value"].as_f64())
        .sum()
}
