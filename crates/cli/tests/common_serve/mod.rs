//! Helpers the server's tests share: a running `llmem serve` and HTTP/1.1 exchanges with
//! it.

// Each test file uses a different subset of these helpers.
#![allow(dead_code)]

use crate::common_cli::*;

/// A running `llmem serve`, killed on drop.
pub struct Serve {
    pub child: Child,
    pub addr: String,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn serve(model: &Path, extra: &[&str]) -> Serve {
    let mut child = Command::new(BIN)
        .arg("serve")
        .arg("--model")
        .arg(model)
        .args(["--port", "0", "--threads", "2"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start llmem serve");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_string();
    // Keep reading stdout so the server never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut sink = String::new();
        let _ = out.read_to_string(&mut sink);
    });
    let s = Serve { child, addr };
    let t = Instant::now();
    loop {
        let (status, _, _) = http(&s.addr, "GET", "/health", &[], b"");
        if status == 200 {
            break;
        }
        assert_eq!(status, 503, "health while loading");
        assert!(t.elapsed() < Duration::from_secs(60), "never became ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    s
}

/// One HTTP/1.1 exchange on a fresh connection: status, head, body.
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[&str],
    body: &[u8],
) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(300))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    let _ = s.write_all(req.as_bytes());
    let _ = s.write_all(body);
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).to_string();
    let Some((head, _)) = text.split_once("\r\n\r\n") else {
        return (0, text, Vec::new());
    };
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body_at = head.len() + 4;
    let mut body = buf[body_at..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    (status, head.to_string(), body)
}

pub fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let n = usize::from_str_radix(std::str::from_utf8(&b[..eol]).unwrap().trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + n]);
        b = &b[eol + 4 + n..];
    }
}

pub fn post(addr: &str, path: &str, body: &Value) -> (u16, String, Value) {
    let (s, h, b) = http(
        addr,
        "POST",
        path,
        &["Content-Type: application/json"],
        body.to_string().as_bytes(),
    );
    (s, h, serde_json::from_slice(&b).unwrap_or(Value::Null))
}

pub fn is_error_shape(v: &Value) -> bool {
    let e = &v["error"];
    e["message"].is_string()
        && e["type"].is_string()
        && e.as_object()
            .is_some_and(|o| o.contains_key("param") && o.contains_key("code"))
}
