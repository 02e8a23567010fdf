//! A deliberately small HTTP/1.1 endpoint: `GET /metrics` in Prometheus text format.
//!
//! No framework: one scrape a second does not need one, and every byte read is bounded.
//! Each connection gets its own short-lived thread (at most [`MAX_CONNECTIONS`] at once;
//! more are closed unanswered), a deadline for the whole request head, a cap on its size,
//! and one response followed by `Connection: close`. Anything that is not a well-formed
//! `GET`/`HEAD` request line gets a 4xx; nothing a client sends can end the server.
//!
//! The body is the latest exposition the sampler published ([`Exposition`]): a scrape never
//! waits for a probe reading.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use probe::PROMETHEUS_CONTENT_TYPE;

/// Largest request head (request line and headers) read; Prometheus sends about 300 bytes.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;
/// Connections handled at once; more are closed at once.
pub const MAX_CONNECTIONS: usize = 32;
/// Time a client has to send its whole request head, and each write may take.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// After an error response, at most this much of the rest of the request is read and
/// thrown away before closing, so the client sees the response rather than a reset.
const DRAIN_BYTES: usize = 64 * 1024;

/// The text served at `/metrics`, replaced by the sampler each tick.
#[derive(Debug, Clone, Default)]
pub struct Exposition(Arc<Mutex<String>>);

impl Exposition {
    pub fn publish(&self, text: String) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = text;
    }

    fn current(&self) -> String {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Binds `addr` and serves `exposition` from a background thread. Returns the bound
/// address (the real port when `addr` asked for port 0).
pub fn serve(addr: SocketAddr, exposition: Exposition) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    thread::Builder::new()
        .name("metrics-http".to_owned())
        .spawn(move || accept_loop(&listener, &exposition))?;
    Ok(local)
}

fn accept_loop(listener: &TcpListener, exposition: &Exposition) {
    let active = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        // Per-connection errors (a client that reset before accept) are the client's.
        let Ok(stream) = stream else { continue };
        let slot = Slot::take(&active);
        if slot.is_none() {
            drop(stream);
            continue;
        }
        let exposition = exposition.clone();
        // If the thread cannot be spawned the closure is dropped unrun, and with it the
        // stream (closed unanswered) and the slot (given back).
        let _ = thread::Builder::new()
            .name("metrics-conn".to_owned())
            .spawn(move || {
                let _slot = slot;
                let _ = handle(stream, &exposition);
            });
    }
}

/// One of the [`MAX_CONNECTIONS`] places, given back on drop (a panicking handler too).
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(active: &Arc<AtomicUsize>) -> Option<Self> {
        if active.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Self(Arc::clone(active)))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What a request head asks for, or why it cannot be answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `GET /metrics` (with `HEAD`: the same without a body).
    Metrics {
        head_only: bool,
    },
    NotFound,
    MethodNotAllowed,
    BadRequest,
}

/// Judges a request line (`GET /metrics HTTP/1.1`).
pub fn route(request_line: &str) -> Route {
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Route::BadRequest;
    };
    let is_token = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphabetic());
    if !is_token(method) || !version.starts_with("HTTP/1.") || target.is_empty() {
        return Route::BadRequest;
    }
    // Absolute form (`http://host/metrics`) names the same resource as origin form.
    let path = match target.strip_prefix("http://") {
        Some(rest) => rest.find('/').map_or("/", |i| &rest[i..]),
        None if target.starts_with('/') => target,
        None => return Route::BadRequest,
    };
    let path = path.split(['?', '#']).next().unwrap_or(path);
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Route::MethodNotAllowed,
    };
    if path == "/metrics" {
        Route::Metrics { head_only }
    } else {
        Route::NotFound
    }
}

/// Why the head could not be read.
enum HeadError {
    TooLarge,
    TimedOut,
    /// Closed before the head ended; `true` when it had sent something.
    Closed(bool),
    Io,
}

/// Reads up to the blank line ending the head; returns the request line.
fn read_head(stream: &mut TcpStream) -> Result<String, HeadError> {
    let deadline = Instant::now() + IO_TIMEOUT;
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0_u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(HeadError::TimedOut);
        }
        stream
            .set_read_timeout(Some(left))
            .map_err(|_| HeadError::Io)?;
        let n = match stream.read(&mut chunk) {
            Ok(0) => return Err(HeadError::Closed(!head.is_empty())),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(HeadError::TimedOut);
            }
            Err(_) => return Err(HeadError::Io),
        };
        // Only the new bytes (and the three before them) can complete the terminator.
        let scan_from = head.len().saturating_sub(3);
        head.extend_from_slice(&chunk[..n]);
        let end = find_head_end(&head[scan_from..]).map(|i| scan_from + i);
        if let Some(end) = end {
            let head = &head[..end];
            let line_end = head.iter().position(|&b| b == b'\n').unwrap_or(head.len());
            let line = head[..line_end]
                .strip_suffix(b"\r")
                .unwrap_or(&head[..line_end]);
            return Ok(String::from_utf8_lossy(line).into_owned());
        }
        if head.len() > MAX_HEAD_BYTES {
            return Err(HeadError::TooLarge);
        }
    }
}

/// Index of the blank line that ends a head (`\r\n\r\n`, or a bare `\n\n`).
fn find_head_end(bytes: &[u8]) -> Option<usize> {
    (0..bytes.len())
        .find(|&i| bytes[i..].starts_with(b"\r\n\r\n") || bytes[i..].starts_with(b"\n\n"))
}

fn handle(mut stream: TcpStream, exposition: &Exposition) -> io::Result<()> {
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let route = match read_head(&mut stream) {
        Ok(line) => route(&line),
        Err(HeadError::TooLarge) => {
            respond_error(&mut stream, "431 Request Header Fields Too Large", None)?;
            return drain_and_close(stream);
        }
        Err(HeadError::TimedOut) => {
            respond_error(&mut stream, "408 Request Timeout", None)?;
            return drain_and_close(stream);
        }
        Err(HeadError::Closed(true)) => {
            return respond_error(&mut stream, "400 Bad Request", None);
        }
        Err(HeadError::Closed(false) | HeadError::Io) => return Ok(()),
    };
    match route {
        Route::Metrics { head_only } => {
            let body = exposition.current();
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: {PROMETHEUS_CONTENT_TYPE}\r\n\
                 Content-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
                body.len()
            );
            stream.write_all(head.as_bytes())?;
            if !head_only {
                stream.write_all(body.as_bytes())?;
            }
            stream.flush()?;
            let _ = stream.shutdown(Shutdown::Write);
            Ok(())
        }
        Route::NotFound => respond_error(&mut stream, "404 Not Found", None),
        Route::MethodNotAllowed => {
            respond_error(
                &mut stream,
                "405 Method Not Allowed",
                Some("Allow: GET, HEAD"),
            )?;
            drain_and_close(stream)
        }
        Route::BadRequest => {
            respond_error(&mut stream, "400 Bad Request", None)?;
            drain_and_close(stream)
        }
    }
}

fn respond_error(stream: &mut TcpStream, status: &str, extra: Option<&str>) -> io::Result<()> {
    let body = format!("{status}\nllmem serves Prometheus metrics at GET /metrics\n");
    let extra = extra.map(|h| format!("{h}\r\n")).unwrap_or_default();
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\n{extra}\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes())?;
    stream.flush()
}

/// Closes our side, then reads (bounded in bytes and time) what the client still sends: a
/// close with unread data makes the kernel send a reset, which can destroy the response
/// before the client reads it.
fn drain_and_close(mut stream: TcpStream) -> io::Result<()> {
    stream.shutdown(Shutdown::Write)?;
    stream.set_read_timeout(Some(Duration::from_millis(500)))?;
    let mut chunk = [0_u8; 4096];
    let mut drained = 0;
    while drained < DRAIN_BYTES {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let metrics = Route::Metrics { head_only: false };
        assert_eq!(route("GET /metrics HTTP/1.1"), metrics);
        assert_eq!(route("GET /metrics?x=1 HTTP/1.0"), metrics);
        assert_eq!(route("GET http://127.0.0.1:9/metrics HTTP/1.1"), metrics);
        assert_eq!(
            route("HEAD /metrics HTTP/1.1"),
            Route::Metrics { head_only: true }
        );
        assert_eq!(route("GET / HTTP/1.1"), Route::NotFound);
        assert_eq!(route("GET /metricsx HTTP/1.1"), Route::NotFound);
        assert_eq!(route("POST /metrics HTTP/1.1"), Route::MethodNotAllowed);
        assert_eq!(route("DELETE / HTTP/1.1"), Route::MethodNotAllowed);
        for bad in [
            "",
            "GET",
            "GET /metrics",
            "GET /metrics HTTP/2.0",
            "GET  /metrics HTTP/1.1",
            "GET /metrics HTTP/1.1 extra",
            "G3T /metrics HTTP/1.1",
            "GET metrics HTTP/1.1",
            "\u{fffd}\u{fffd} / HTTP/1.1",
        ] {
            assert_eq!(route(bad), Route::BadRequest, "{bad:?}");
        }
    }

    #[test]
    fn head_end_is_found_in_either_line_ending() {
        assert_eq!(
            find_head_end(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(23)
        );
        assert_eq!(find_head_end(b"GET / HTTP/1.1\n\n"), Some(14));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
    }
}
