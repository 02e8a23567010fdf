//! The other side of the status endpoints: `GET` a running server's JSON (for `llmem ps`
//! and `llmem monitor --attach`), over one HTTP/1.1 exchange on loopback or a LAN.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use serde_json::Value;

/// The JSON a server answers to `GET {base}{path}` (`base` as `http://host:port`),
/// sending `Authorization: Bearer key` when given.
///
/// # Errors
/// A URL that is not `http://host[:port]`, no connection, a non-200 answer (with its
/// error message), or a body that is not JSON.
pub fn get_json(base: &str, path: &str, key: Option<&str>) -> Result<Value, String> {
    let rest = base
        .trim_end_matches('/')
        .strip_prefix("http://")
        .ok_or_else(|| format!("{base:?} is not an http:// URL (such as http://127.0.0.1:8080)"))?;
    if rest.is_empty() || rest.contains('/') {
        return Err(format!(
            "{base:?} should be only a scheme, host and port, such as http://127.0.0.1:8080"
        ));
    }
    let host_port = if rest
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        rest.to_string()
    } else {
        format!("{rest}:80")
    };
    let addr = host_port
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {rest}: {e}"))?
        .next()
        .ok_or_else(|| format!("cannot resolve {rest}"))?;
    let timeout = Duration::from_secs(10);
    let mut s = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| format!("cannot reach {base}: {e} (is llmem serve running there?)"))?;
    let _ = s.set_read_timeout(Some(timeout));
    let auth = key.map_or_else(String::new, |k| format!("Authorization: Bearer {k}\r\n"));
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {rest}\r\nConnection: close\r\n{auth}\r\n"
    )
    .map_err(|e| format!("cannot send to {base}: {e}"))?;
    let mut buf = Vec::new();
    s.take(64 << 20)
        .read_to_end(&mut buf)
        .map_err(|e| format!("cannot read from {base}: {e}"))?;
    let at = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("{base} answered something that is not HTTP"))?;
    let head = String::from_utf8_lossy(&buf[..at]).to_string();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("{base} answered something that is not HTTP"))?;
    let mut body = buf[at + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    let v: Value = serde_json::from_slice(&body)
        .map_err(|e| format!("{base}{path} did not answer JSON ({status}): {e}"))?;
    if status != 200 {
        let msg = v["error"]["message"].as_str().unwrap_or("no message");
        return Err(format!("{base}{path} answered {status}: {msg}"));
    }
    Ok(v)
}

/// The data of a chunked body (what is well formed of it).
fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let n = std::str::from_utf8(&b[..eol])
            .ok()
            .and_then(|h| usize::from_str_radix(h.trim(), 16).ok());
        match n {
            Some(n) if n > 0 && b.len() >= eol + 2 + n => {
                out.extend_from_slice(&b[eol + 2..eol + 2 + n]);
                b = &b[(eol + 4 + n).min(b.len())..];
            }
            _ => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_urls_are_refused_with_the_form_expected() {
        for bad in ["127.0.0.1:8080", "https://x", "http://", "http://h:1/v1"] {
            let e = get_json(bad, "/api/ps", None).unwrap_err();
            assert!(e.contains("http://"), "{bad}: {e}");
        }
    }

    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(
            dechunk(b"3\r\n{\"a\r\n4\r\n\":1}\r\n0\r\n\r\n"),
            b"{\"a\":1}"
        );
    }
}
