//! The control-plane API client of the operator commands: one request per call, errors
//! mapped to the documented exit codes.

use std::fmt;
use std::time::Duration;

use futures_util::StreamExt as _;
use reqwest::{Method, StatusCode};
use reqwest_tls as reqwest;
use serde_json::Value;

/// The exit codes of `oris` (documented in `oris --help` and docs/cli.md).
pub mod exit {
    /// A command-specific failure: a local store error, `verify` found a mismatch, a run
    /// followed with `--wait` failed or was cancelled.
    pub const FAILED: u8 = 1;
    /// Usage: bad flags or arguments, a bulk cancel without `--yes` off a terminal.
    pub const USAGE: u8 = 2;
    /// 404: no such thread, interrupt, graph, checkpoint, key, …
    pub const NOT_FOUND: u8 = 3;
    /// 409: run active, interrupt not pending, idempotency conflict, …
    pub const CONFLICT: u8 = 4;
    /// 401 / 403: missing, invalid or revoked token; a role that does not allow the call.
    pub const AUTH: u8 = 5;
    /// 5xx and 429: the server failed, is unavailable, overloaded or rate limiting.
    pub const SERVER: u8 = 6;
    /// The server URL could not be reached (connection refused, DNS, TLS, timeout).
    pub const NETWORK: u8 = 7;
    /// 400 / 413 / 415 / 422: the server refused the input.
    pub const INVALID: u8 = 8;
}

/// A failure of a command, with its exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    pub fn new(code: u8, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
        }
    }

    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(exit::USAGE, message)
    }

    pub fn failed(message: impl Into<String>) -> Self {
        Self::new(exit::FAILED, message)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        match e.downcast::<Failure>() {
            Ok(f) => f,
            Err(e) => Failure::failed(format!("{e:#}")),
        }
    }
}

pub type Result<T> = std::result::Result<T, Failure>;

/// The exit code of an HTTP error status.
pub fn code_of(status: StatusCode) -> u8 {
    match status.as_u16() {
        404 => exit::NOT_FOUND,
        409 => exit::CONFLICT,
        401 | 403 => exit::AUTH,
        400 | 405 | 413 | 415 | 422 => exit::INVALID,
        _ => exit::SERVER,
    }
}

/// An API error as printed: `error: <code> (HTTP <status>): <message> [request <id>]`.
fn api_failure(status: StatusCode, request_id: Option<String>, body: &[u8]) -> Failure {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let err = parsed.as_ref().map(|v| &v["error"]);
    let code = err
        .and_then(|e| e["code"].as_str())
        .map(str::to_owned)
        .unwrap_or_else(|| {
            status
                .canonical_reason()
                .unwrap_or("error")
                .to_lowercase()
                .replace(' ', "_")
        });
    let message = err
        .and_then(|e| e["message"].as_str())
        .map(str::to_owned)
        .unwrap_or_else(|| String::from_utf8_lossy(body).chars().take(300).collect());
    let request_id = err
        .and_then(|e| e["request_id"].as_str())
        .map(str::to_owned)
        .or(request_id)
        .unwrap_or_else(|| "-".to_owned());
    let details = err
        .map(|e| &e["details"])
        .filter(|d| d.as_object().is_some_and(|o| !o.is_empty()))
        .map(|d| format!("\n  details: {d}"))
        .unwrap_or_default();
    Failure::new(
        code_of(status),
        format!(
            "{code} (HTTP {}): {message}\n  request id: {request_id}{details}",
            status.as_u16()
        ),
    )
}

/// A transport error with its causes (the top level alone says only "error sending request").
fn transport_detail(e: &reqwest::Error) -> String {
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// The connection settings of a client command.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

/// A successful answer's JSON body.
#[derive(Debug)]
pub struct Answer {
    pub body: Value,
}

impl Client {
    pub fn new(
        url: &str,
        token: Option<String>,
        ca_cert: Option<&std::path::Path>,
    ) -> Result<Self> {
        let base = url.trim().trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Failure::usage(format!(
                "`{url}` is not a server URL: expected http://HOST:PORT or https://HOST"
            )));
        }
        install_tls_provider();
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("oris-cli/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = ca_cert {
            let pem = std::fs::read(path).map_err(|e| {
                Failure::usage(format!("--ca-cert: cannot read `{}`: {e}", path.display()))
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                Failure::usage(format!(
                    "--ca-cert: `{}` holds no PEM certificate: {e}",
                    path.display()
                ))
            })?;
            if certs.is_empty() {
                return Err(Failure::usage(format!(
                    "--ca-cert: `{}` holds no PEM certificate",
                    path.display()
                )));
            }
            for c in certs {
                builder = builder.add_root_certificate(c);
            }
        }
        let http = builder
            .build()
            .map_err(|e| Failure::failed(format!("HTTP client: {}", transport_detail(&e))))?;
        Ok(Client {
            http,
            base,
            token: token.filter(|t| !t.is_empty()),
        })
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    fn network(&self, e: &reqwest::Error) -> Failure {
        Failure::new(
            exit::NETWORK,
            format!(
                "cannot reach the server at {}: {}",
                self.base,
                transport_detail(e)
            ),
        )
    }

    async fn send(&self, r: reqwest::RequestBuilder) -> Result<Answer> {
        let resp = r.send().await.map_err(|e| self.network(&e))?;
        let status = resp.status();
        let request_id = resp
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = resp.bytes().await.map_err(|e| self.network(&e))?;
        if !status.is_success() {
            return Err(api_failure(status, request_id, &bytes));
        }
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).map_err(|e| {
                Failure::new(
                    exit::SERVER,
                    format!("the server answered {status} with a body that is not JSON: {e}"),
                )
            })?
        };
        Ok(Answer { body })
    }

    /// GET with query parameters.
    pub async fn get(&self, path: &str, query: &[(String, String)]) -> Result<Value> {
        Ok(self
            .send(self.request(Method::GET, path).query(query))
            .await?
            .body)
    }

    /// POST with a JSON body and an optional idempotency key.
    pub async fn post(&self, path: &str, body: &Value, key: Option<&str>) -> Result<Answer> {
        let mut r = self.request(Method::POST, path).json(body);
        if let Some(k) = key {
            r = r.header("idempotency-key", k);
        }
        self.send(r).await
    }

    pub async fn delete(&self, path: &str) -> Result<Value> {
        Ok(self.send(self.request(Method::DELETE, path)).await?.body)
    }

    /// Follows every cursor of a paginated list: `items` is the array's field.
    pub async fn list(
        &self,
        path: &str,
        query: &[(String, String)],
        items: &str,
        all: bool,
        mut each: impl FnMut(&Value),
    ) -> Result<Option<String>> {
        let mut query = query.to_vec();
        loop {
            let page = self.get(path, &query).await?;
            for v in page[items].as_array().into_iter().flatten() {
                each(v);
            }
            let next = page["next_cursor"].as_str().map(str::to_owned);
            match next {
                Some(c) if all => {
                    query.retain(|(k, _)| k != "cursor");
                    query.push(("cursor".into(), c));
                }
                other => return Ok(other),
            }
        }
    }

    /// Opens the thread's Server-Sent Events stream after `after`.
    pub async fn stream(&self, thread: &str, after: u64) -> Result<EventStream> {
        let r = self
            .request(Method::GET, &format!("/v1/jobs/{}/stream", seg(thread)))
            .query(&[("after", after.to_string())])
            .header("accept", "text/event-stream");
        let resp = r.send().await.map_err(|e| self.network(&e))?;
        let status = resp.status();
        if !status.is_success() {
            let request_id = resp
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let bytes = resp.bytes().await.unwrap_or_default();
            return Err(api_failure(status, request_id, &bytes));
        }
        Ok(EventStream {
            inner: Box::pin(resp.bytes_stream().map(|r| r.map(|b| b.to_vec()))),
            buf: Vec::new(),
            data: String::new(),
            base: self.base.clone(),
        })
    }
}

/// A path segment, percent-encoded (thread ids may hold `:@+=`).
pub fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Installs rustls' `ring` provider for the process (once; later calls change nothing).
pub fn install_tls_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

type ByteStream =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<Vec<u8>>> + Send>>;

/// An SSE stream of timeline events (the `data` of each message, parsed).
pub struct EventStream {
    inner: ByteStream,
    buf: Vec<u8>,
    data: String,
    base: String,
}

impl fmt::Debug for EventStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventStream").finish_non_exhaustive()
    }
}

impl EventStream {
    /// The next event; `None` when the server ended the stream.
    pub async fn next(&mut self) -> Result<Option<Value>> {
        loop {
            while let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                let line = String::from_utf8_lossy(&line);
                let line = line.trim_end_matches(['\n', '\r']);
                if line.is_empty() {
                    if self.data.is_empty() {
                        continue;
                    }
                    let data = std::mem::take(&mut self.data);
                    let v = serde_json::from_str(&data).map_err(|e| {
                        Failure::new(exit::SERVER, format!("a stream event is not JSON: {e}"))
                    })?;
                    return Ok(Some(v));
                }
                if let Some(d) = line.strip_prefix("data:") {
                    if !self.data.is_empty() {
                        self.data.push('\n');
                    }
                    self.data.push_str(d.strip_prefix(' ').unwrap_or(d));
                }
                // `id:`, `event:` and `:` comments carry nothing the data does not.
            }
            match self.inner.next().await {
                Some(Ok(chunk)) => self.buf.extend_from_slice(&chunk),
                Some(Err(e)) => {
                    return Err(Failure::new(
                        exit::NETWORK,
                        format!(
                            "the event stream from {} broke: {}",
                            self.base,
                            transport_detail(&e)
                        ),
                    ));
                }
                None => return Ok(None),
            }
        }
    }
}
