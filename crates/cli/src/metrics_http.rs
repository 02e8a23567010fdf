//! `GET /metrics` in Prometheus text format, served by hyper on a one-thread tokio runtime.
//!
//! The first version of this endpoint was a hand-written server with a thread per
//! connection and at most 32 of them: 33 clients that connected and sent nothing made
//! every scrape fail for as long as they stayed (issue 13, finding 8). Here a connection is
//! a task on one event loop, so an idle one costs a socket and a few hundred bytes, and
//! none can hold up another. Each connection:
//!
//! - gets [`HEAD_TIMEOUT`] to send its whole request head, counted from the moment the
//!   server waits for it (hyper's `header_read_timeout`, with tokio's timer): a client that
//!   sends nothing, or a header a byte at a time, is closed when it runs out;
//! - may send at most [`MAX_HEAD_BYTES`] of head (431 beyond);
//! - is served one request and closed (`Connection: close`), all within
//!   [`CONNECTION_DEADLINE`], so a client that never reads its response goes too.
//!
//! There is no cap on connections beyond the operating system's limit on open files, whose
//! soft value is raised to the hard one when the endpoint starts. hyper answers what does
//! not parse as HTTP/1.1 (400, 431) or closes the connection (an HTTP/2 preface, a head cut
//! short); nothing a client sends can end the server.
//!
//! The body is the latest exposition the sampler published ([`Exposition`]): a scrape never
//! waits for a probe reading.

use std::convert::Infallible;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{ALLOW, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use probe::PROMETHEUS_CONTENT_TYPE;

/// Largest request head (request line and headers) read; Prometheus sends about 300 bytes.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;
/// Time a client has to send its whole request head, from the moment it is accepted.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a connection may live in all: its head, our response, and the client reading it.
pub const CONNECTION_DEADLINE: Duration = Duration::from_secs(10);
/// How long the accept loop waits before trying again when the OS refuses a connection
/// (out of file descriptors): the deadlines above free some meanwhile.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

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
///
/// # Errors
/// When the address cannot be bound, or the runtime or its thread cannot be started.
pub fn serve(addr: SocketAddr, exposition: Exposition) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;
    raise_open_files_limit();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    thread::Builder::new()
        .name("metrics-http".to_owned())
        .spawn(move || runtime.block_on(accept_loop(listener, exposition)))?;
    Ok(local)
}

async fn accept_loop(listener: TcpListener, exposition: Exposition) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("llmem monitor: the metrics endpoint stopped: {e}");
            return;
        }
    };
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            // A client that reset before accept is its own problem; out of descriptors,
            // wait for the deadlines to close some.
            Err(_) => {
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let exposition = exposition.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let response = respond(req.method(), req.uri().path(), &exposition);
                async move { Ok::<_, Infallible>(response) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .max_header_size(MAX_HEAD_BYTES)
                .keep_alive(false)
                // A client may shut its side once its request is sent: still answer it
                // (without this hyper drops the request when it sees that end first).
                .half_close(true)
                .title_case_headers(true)
                .serve_connection(TokioIo::new(stream), service);
            // Errors (bad heads, timeouts, resets) end only this connection; dropping it
            // at the deadline closes the socket.
            let _ = tokio::time::timeout(CONNECTION_DEADLINE, connection).await;
        });
    }
}

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `GET /metrics` (with `HEAD`: the same without a body).
    Metrics,
    NotFound,
    MethodNotAllowed,
}

/// Judges a request's method and path (the query is not part of `path`).
pub fn route(method: &Method, path: &str) -> Route {
    if *method != Method::GET && *method != Method::HEAD {
        Route::MethodNotAllowed
    } else if path == "/metrics" {
        Route::Metrics
    } else {
        Route::NotFound
    }
}

/// The whole response to a request (hyper leaves the body out for `HEAD`).
fn respond(method: &Method, path: &str, exposition: &Exposition) -> Response<Full<Bytes>> {
    match route(method, path) {
        Route::Metrics => {
            let body = exposition.current();
            let mut r = text(StatusCode::OK, body);
            let h = r.headers_mut();
            h.insert(
                CONTENT_TYPE,
                HeaderValue::from_static(PROMETHEUS_CONTENT_TYPE),
            );
            h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
        Route::NotFound => error(StatusCode::NOT_FOUND),
        Route::MethodNotAllowed => {
            let mut r = error(StatusCode::METHOD_NOT_ALLOWED);
            r.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            r
        }
    }
}

fn error(status: StatusCode) -> Response<Full<Bytes>> {
    text(
        status,
        format!("{status}\nllmem serves Prometheus metrics at GET /metrics\n"),
    )
}

/// A plain-text response whose length is stated (also for `HEAD`, which has no body).
fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let len = body.len();
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(CONTENT_LENGTH, HeaderValue::from(len));
    r
}

/// Raises this process's soft limit on open files to its hard limit, so that the
/// connections the endpoint holds at once are bounded by the OS's ceiling rather than by
/// the customary soft 1,024. A refusal leaves the limit as it was.
fn raise_open_files_limit() {
    #[cfg(unix)]
    {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes one rlimit into the struct we own.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut lim) } != 0 {
            return;
        }
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            // SAFETY: setrlimit reads the struct we own; raising the soft limit up to the
            // hard one needs no privilege.
            let _ = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const lim) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(route(&Method::GET, "/metrics"), Route::Metrics);
        assert_eq!(route(&Method::HEAD, "/metrics"), Route::Metrics);
        assert_eq!(route(&Method::GET, "/"), Route::NotFound);
        assert_eq!(route(&Method::GET, "/metricsx"), Route::NotFound);
        assert_eq!(route(&Method::HEAD, "/metrics/"), Route::NotFound);
        assert_eq!(route(&Method::POST, "/metrics"), Route::MethodNotAllowed);
        assert_eq!(route(&Method::DELETE, "/"), Route::MethodNotAllowed);
    }

    #[test]
    fn responses_state_their_type_and_length() {
        let e = Exposition::default();
        e.publish("llmem_x 1\n".to_owned());
        let ok = respond(&Method::GET, "/metrics", &e);
        assert_eq!(ok.status(), StatusCode::OK);
        assert_eq!(ok.headers()[CONTENT_TYPE], PROMETHEUS_CONTENT_TYPE);
        assert_eq!(ok.headers()[CONTENT_LENGTH], "10");
        let not_allowed = respond(&Method::PUT, "/metrics", &e);
        assert_eq!(not_allowed.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(not_allowed.headers()[ALLOW], "GET, HEAD");
        assert_eq!(
            respond(&Method::GET, "/x", &e).status(),
            StatusCode::NOT_FOUND
        );
    }
}
