//! `llmem monitor --prometheus`: the metrics endpoint against malformed HTTP and a real
//! Prometheus scraping it.

#[path = "common_cli/mod.rs"]
mod common_cli;

use common_cli::*;
// ---------------------------------------------------------------------------------------
// The metrics endpoint

#[test]
fn metrics_endpoint_serves_prometheus_text_and_survives_malformed_requests() {
    let (mut server, addr) = start_headless();

    let ok = get(addr, "/metrics").expect("GET /metrics");
    assert_eq!(ok.status, 200, "{}", ok.head);
    assert_eq!(ok.header("content-type"), Some(PROMETHEUS_CONTENT_TYPE));
    assert_eq!(
        ok.header("content-length").and_then(|v| v.parse().ok()),
        Some(ok.body.len())
    );
    assert!(
        ok.body.contains("# TYPE llmem_mem_total_bytes gauge"),
        "{}",
        ok.body
    );
    #[cfg(target_os = "linux")]
    assert!(
        ok.body
            .lines()
            .any(|l| l == format!("llmem_mem_total_bytes {}", meminfo_total_bytes())),
        "{}",
        ok.body
    );
    assert!(ok.body.contains("llmem_pressure_ratio "), "{}", ok.body);

    // A client that connects and sends nothing must not hold up the others.
    let idle = TcpStream::connect(addr).unwrap();

    let huge_header = {
        let mut r = b"GET /metrics HTTP/1.1\r\nX-Filler: ".to_vec();
        r.extend(std::iter::repeat_n(b'a', 256 * 1024));
        r.extend_from_slice(b"\r\n\r\n");
        r
    };
    // What may answer each: a status, or CLOSED (the connection closed with no response,
    // fair for what is not an HTTP/1 request at all, never for a real one).
    const CLOSED: u16 = 0;
    let cases: [(&str, Vec<u8>, &[u16]); 9] = [
        (
            "wrong method",
            b"POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc".to_vec(),
            &[405],
        ),
        (
            "unknown path",
            b"GET /secrets HTTP/1.1\r\n\r\n".to_vec(),
            &[404],
        ),
        (
            "garbage line",
            b"\x00\x01\x02 garbage\xff\r\n\r\n".to_vec(),
            &[400],
        ),
        ("no version", b"GET /metrics\r\n\r\n".to_vec(), &[400]),
        (
            "HTTP/2 preface",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
            &[400, CLOSED],
        ),
        ("huge header", huge_header, &[431, CLOSED]),
        ("truncated head", b"GET /metr".to_vec(), &[400, CLOSED]),
        ("empty", Vec::new(), &[CLOSED]),
        ("bare newlines", b"\n\n".to_vec(), &[400, CLOSED]),
    ];
    for (name, request, allowed) in cases {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let _ = stream.write_all(&request);
        // Half-close: the server sees the end of what we send (the truncated head and the
        // empty request end there).
        let _ = stream.shutdown(std::net::Shutdown::Write);
        let mut raw = Vec::new();
        let _ = stream.read_to_end(&mut raw);
        let text = String::from_utf8_lossy(&raw);
        if raw.is_empty() {
            assert!(
                allowed.contains(&CLOSED),
                "{name}: closed without a response"
            );
        } else {
            let status: u16 = text
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("{name}: no status in {text:?}"));
            assert!(
                allowed.contains(&status),
                "{name}: got {status}, want {allowed:?}"
            );
            if status == 405 {
                assert!(text.contains("Allow: GET, HEAD"), "{text}");
            }
        }
        assert!(server.exited().is_none(), "server died after {name}");
    }

    // HEAD has the headers and no body.
    let head = exchange(addr, b"HEAD /metrics HTTP/1.1\r\n\r\n").unwrap();
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());

    // Many at once: every one answered (there is no connection cap to close them).
    let burst: Vec<_> = (0..40)
        .map(|_| std::thread::spawn(move || get(addr, "/metrics").map(|r| r.status)))
        .collect();
    let answered = burst
        .into_iter()
        .map(|h| h.join().unwrap())
        .filter(|r| matches!(r, Ok(200)))
        .count();
    assert_eq!(answered, 40);

    drop(idle);
    let after = get(addr, "/metrics").expect("a good request after the bad ones");
    assert_eq!(after.status, 200);
    assert!(after.body.contains("llmem_mem_total_bytes"));
    assert!(server.exited().is_none());
}

#[test]
fn a_real_prometheus_scrapes_the_endpoint_without_errors() {
    let Some(prometheus) = external_tool("prometheus", &["/usr/bin/prometheus"]) else {
        return;
    };
    let (_llmem, target) = start_headless();
    let (dir, mut server, web) = start_prometheus(&prometheus, &target.to_string(), "llmem");
    let log_text =
        || std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default();

    // The target is up and its last scrape had no error.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = String::from("no answer from Prometheus");
    let up = loop {
        if let Some(status) = server.exited() {
            panic!("prometheus exited ({status}):\n{}", log_text());
        }
        if let Ok(r) = get(web, "/api/v1/targets") {
            let v: Value = serde_json::from_str(&r.body).unwrap_or(Value::Null);
            let found = v["data"]["activeTargets"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|t| t["labels"]["job"] == "llmem")
                .cloned();
            if let Some(t) = found {
                if t["health"] == "up" && t["lastError"] == "" {
                    break t;
                }
                last = t.to_string();
            }
        }
        assert!(
            Instant::now() < deadline,
            "target never up: {last}\n{}",
            log_text()
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(up["scrapeUrl"], format!("http://{target}/metrics"));

    // And the scraped value is queryable, equal to what the kernel says.
    let value = loop {
        if let Ok(r) = get(web, "/api/v1/query?query=llmem_mem_total_bytes") {
            let v: Value = serde_json::from_str(&r.body).unwrap_or(Value::Null);
            if let Some(s) = v["data"]["result"][0]["value"][1].as_str() {
                break s.parse::<f64>().expect("a number");
            }
            last = r.body;
        }
        assert!(
            Instant::now() < deadline,
            "no value: {last}\n{}",
            log_text()
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    assert!(value > 0.0);
    #[cfg(target_os = "linux")]
    assert_eq!(value as u64, meminfo_total_bytes());
}
