//! `llmem monitor --prometheus` against clients that hold connections open (issue 13,
//! finding 8): 33 idle connections used to make every scrape fail.

#[path = "common_cli/mod.rs"]
mod common_cli;

use common_cli::*;

/// The server's head timeout (`metrics_http::HEAD_TIMEOUT`).
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection that has sent `prefix` of a request head and nothing more.
fn partial(addr: SocketAddr, prefix: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.write_all(prefix).expect("send the start of a head");
    s
}

#[test]
fn finding8_idle_and_slow_connections_do_not_starve_metrics() {
    let (mut server, addr) = start_headless();
    // Twice the old server's cap, sending nothing, and as many again stuck mid-header.
    let idle: Vec<TcpStream> = (0..64)
        .map(|_| TcpStream::connect(addr).expect("connect"))
        .collect();
    let slow: Vec<TcpStream> = (0..64)
        .map(|i| {
            partial(
                addr,
                format!("GET /metrics HTTP/1.1\r\nX-Slow-{i}: ").as_bytes(),
            )
        })
        .collect();
    for round in 0..5 {
        let t = Instant::now();
        let r = get(addr, "/metrics").unwrap_or_else(|e| panic!("scrape {round}: {e}"));
        let took = t.elapsed();
        assert_eq!(r.status, 200, "scrape {round}: {}", r.head);
        assert!(r.body.contains("llmem_mem_total_bytes"), "{}", r.body);
        assert!(
            took < Duration::from_secs(2),
            "scrape {round} took {took:?} beside 128 idle connections"
        );
    }
    assert!(server.exited().is_none());
    drop((idle, slow));
}

#[test]
fn finding8_a_head_never_finished_is_closed_after_the_timeout() {
    let (_server, addr) = start_headless();
    let started = Instant::now();
    let silent = TcpStream::connect(addr).expect("connect");
    let half = partial(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n");
    // A slowloris proper: a byte of header every 250 ms, never the blank line.
    let mut dribbled = partial(addr, b"GET /metrics HTTP/1.1\r\nX-Slow: ");
    let reader = dribbled.try_clone().expect("clone");
    let dribbler = std::thread::spawn(move || {
        for _ in 0..80 {
            if dribbled.write_all(b"a").is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    });
    for (name, mut stream) in [
        ("silent", silent),
        ("half a head", half),
        ("dribbled", reader),
    ] {
        let limit = HEAD_TIMEOUT + Duration::from_secs(10);
        stream.set_read_timeout(Some(limit)).unwrap();
        let mut got = Vec::new();
        // Closed: end of stream, or a reset; a read timeout means it stayed open.
        let read = stream.read_to_end(&mut got);
        let at = started.elapsed();
        if let Err(e) = &read {
            assert!(
                !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ),
                "{name}: still open after {at:?}"
            );
        }
        assert!(
            !String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"),
            "{name}: served without a complete head"
        );
        // Not closed early (the client had its time), not kept long past the timeout.
        assert!(
            at >= HEAD_TIMEOUT - Duration::from_millis(500),
            "{name}: closed after only {at:?}"
        );
        assert!(at < limit, "{name}: closed only after {at:?}");
    }
    dribbler.join().unwrap();
    // And the endpoint still answers.
    assert_eq!(get(addr, "/metrics").expect("scrape").status, 200);
}

#[test]
fn finding8_binding_beyond_loopback_warns_and_serves() {
    let (mut server, addr, stderr) = start_headless_on("0.0.0.0:0");
    let warnings: Vec<&String> = stderr.iter().filter(|l| l.contains("warning")).collect();
    assert_eq!(warnings.len(), 1, "{stderr:?}");
    assert!(
        warnings[0].contains("reachable from other machines"),
        "{stderr:?}"
    );
    let local = SocketAddr::from(([127, 0, 0, 1], addr.port()));
    assert_eq!(get(local, "/metrics").expect("scrape").status, 200);
    assert!(server.exited().is_none());

    // Loopback says nothing.
    let (_quiet, _, stderr) = start_headless_on("127.0.0.1:0");
    assert!(!stderr.iter().any(|l| l.contains("warning")), "{stderr:?}");
}
