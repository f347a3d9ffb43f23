//! The HTTP side of the worker protocol: one method per route, answers and refusals typed.
//!
//! Every call is one request; retrying is the caller's decision (a report is retried with
//! the same body until the lease's end, a poll backs off, an ack is tried a few times). A
//! refusal keeps the server's stable error `code` so callers match on it, never on text.

use std::time::Duration;

use oris_core::protocol::{
    Ack, AckResponse, Heartbeat, HeartbeatResponse, PollRequest, PollResponse, Report,
    ReportReceipt,
};
use reqwest::StatusCode;
use reqwest_tls as reqwest;
use serde_json::Value;

/// How a call failed.
#[derive(Debug, Clone)]
pub(crate) enum CallError {
    /// No answer: connection refused or reset, timeout, a body that is not the expected
    /// JSON. The request may or may not have been applied.
    Transport(String),
    /// The server answered with an error status.
    Refused {
        /// HTTP status.
        status: StatusCode,
        /// The stable error code (`lease_lost`, `protocol_mismatch`…; `http_<status>` when
        /// the body is not an Oris error).
        code: String,
        /// The server's message.
        message: String,
        /// `Retry-After`, when the server sent one.
        retry_after: Option<Duration>,
    },
}

impl CallError {
    /// The error code of a refusal.
    pub(crate) fn code(&self) -> Option<&str> {
        match self {
            CallError::Refused { code, .. } => Some(code),
            CallError::Transport(_) => None,
        }
    }

    /// Whether the same request may succeed later: no answer, overload, rate limit, or a
    /// server-side failure (its store unreachable).
    pub(crate) fn is_transient(&self) -> bool {
        match self {
            CallError::Transport(_) => true,
            CallError::Refused { status, .. } => {
                status.is_server_error() || *status == StatusCode::TOO_MANY_REQUESTS
            }
        }
    }

    /// The server's own pacing, if it asked for one.
    pub(crate) fn retry_after(&self) -> Option<Duration> {
        match self {
            CallError::Refused { retry_after, .. } => *retry_after,
            CallError::Transport(_) => None,
        }
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Transport(e) => write!(f, "no answer: {e}"),
            CallError::Refused {
                status,
                code,
                message,
                ..
            } => write!(f, "{} {code}: {message}", status.as_u16()),
        }
    }
}

/// The certificates of PEM bundles to trust besides the built-in roots. Each bundle must
/// hold at least one certificate: text without any is an error, not an empty trust list.
pub(crate) fn root_certificates(bundles: &[Vec<u8>]) -> Result<Vec<reqwest::Certificate>, String> {
    let mut out = Vec::new();
    for (i, pem) in bundles.iter().enumerate() {
        let which = if bundles.len() == 1 {
            "the CA certificate PEM".to_owned()
        } else {
            format!("CA certificate PEM #{}", i + 1)
        };
        let certs = reqwest::Certificate::from_pem_bundle(pem)
            .map_err(|e| format!("{which} does not parse: {e}"))?;
        if certs.is_empty() {
            return Err(format!(
                "{which} holds no certificate (expected -----BEGIN CERTIFICATE----- blocks)"
            ));
        }
        out.extend(certs);
    }
    Ok(out)
}

/// The server's worker routes.
#[derive(Debug, Clone)]
pub(crate) struct Client {
    http: reqwest::Client,
    /// The server's base URL without a trailing slash.
    base: String,
    token: Option<String>,
    worker_id: String,
    /// Time limit of every call but the long-poll.
    call_timeout: Duration,
}

impl Client {
    /// A client trusting the built-in roots only (the tests').
    #[cfg(test)]
    pub(crate) fn new(
        base: &str,
        token: Option<String>,
        worker_id: String,
        call_timeout: Duration,
    ) -> Result<Self, String> {
        Self::with_roots(base, token, worker_id, call_timeout, Vec::new())
    }

    /// A client of the server at `base`, trusting `roots` ([`root_certificates`]) besides
    /// the built-in roots.
    pub(crate) fn with_roots(
        base: &str,
        token: Option<String>,
        worker_id: String,
        call_timeout: Duration,
        roots: Vec<reqwest::Certificate>,
    ) -> Result<Self, String> {
        // https:// URLs: rustls needs a process-wide crypto provider; `ring` unless the
        // process installed one.
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let mut builder = reqwest::Client::builder().connect_timeout(call_timeout);
        for c in roots {
            builder = builder.add_root_certificate(c);
        }
        let http = builder.build().map_err(|e| e.to_string())?;
        Ok(Client {
            http,
            base: base.trim_end_matches('/').to_owned(),
            token,
            worker_id,
            call_timeout,
        })
    }

    /// The server's base URL (for logs).
    pub(crate) fn base(&self) -> &str {
        &self.base
    }

    /// `POST /v1/workers/poll`. The request may be held open for `wait_ms`; the time limit
    /// leaves the server that long plus the usual call time.
    pub(crate) async fn poll(&self, request: &PollRequest) -> Result<PollResponse, CallError> {
        let timeout = Duration::from_millis(request.wait_ms) + self.call_timeout;
        self.post("/v1/workers/poll".into(), request, timeout).await
    }

    /// `POST /v1/workers/{id}/heartbeat`.
    pub(crate) async fn heartbeat(
        &self,
        heartbeat: &Heartbeat,
    ) -> Result<HeartbeatResponse, CallError> {
        let path = format!("/v1/workers/{}/heartbeat", self.worker_id);
        self.post(path, heartbeat, self.call_timeout).await
    }

    /// `POST /v1/workers/{id}/report-step`.
    pub(crate) async fn report(&self, report: &Report) -> Result<ReportReceipt, CallError> {
        let path = format!("/v1/workers/{}/report-step", self.worker_id);
        self.post(path, report, self.call_timeout).await
    }

    /// `POST /v1/workers/{id}/ack`.
    pub(crate) async fn ack(&self, ack: &Ack) -> Result<AckResponse, CallError> {
        let path = format!("/v1/workers/{}/ack", self.worker_id);
        self.post(path, ack, self.call_timeout).await
    }

    /// `POST /v1/workers/{id}/stop`: the graceful shutdown announcement.
    pub(crate) async fn stop(&self) -> Result<(), CallError> {
        let path = format!("/v1/workers/{}/stop", self.worker_id);
        self.post::<Value>(path, &serde_json::json!({}), self.call_timeout)
            .await
            .map(drop)
    }

    async fn post<T: serde::de::DeserializeOwned>(
        &self,
        path: String,
        body: &impl serde::Serialize,
        timeout: Duration,
    ) -> Result<T, CallError> {
        let url = format!("{}{path}", self.base);
        // Serialized here, not by reqwest, so a body that does not serialize is reported
        // as such (it cannot happen with the protocol's types, but a silent empty body would
        // hide it).
        let body = serde_json::to_vec(body).map_err(|e| CallError::Transport(e.to_string()))?;
        let mut req = self
            .http
            .post(&url)
            .timeout(timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| CallError::Transport(transport_detail(&e)))?;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| CallError::Transport(transport_detail(&e)))?;
        if status.is_success() {
            // From bytes, never through a `serde_json::Value`: payloads are raw JSON values
            // that deserialize only from text.
            return serde_json::from_slice(&bytes).map_err(|e| {
                CallError::Transport(format!(
                    "{url} answered {status} with an unexpected body: {e}"
                ))
            });
        }
        let (code, message) = error_body(&bytes)
            .unwrap_or_else(|| (format!("http_{}", status.as_u16()), body_excerpt(&bytes)));
        Err(CallError::Refused {
            status,
            code,
            message,
            retry_after,
        })
    }
}

/// `{"error": {"code", "message"}}`, the server's error body.
fn error_body(bytes: &[u8]) -> Option<(String, String)> {
    let v: Value = serde_json::from_slice(bytes).ok()?;
    let e = v.get("error")?;
    let code = e.get("code")?.as_str()?.to_owned();
    let message = e
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    Some((code, message))
}

fn body_excerpt(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    match text.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_owned(),
    }
}

/// A reqwest error with its causes (the top level alone says only "error sending request").
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies() {
        let body = br#"{"error": {"code": "lease_lost", "message": "gone", "details": {}}}"#;
        assert_eq!(error_body(body), Some(("lease_lost".into(), "gone".into())));
        assert_eq!(error_body(b"<html>bad gateway</html>"), None);
        assert_eq!(error_body(br#"{"error": "x"}"#), None);
        let long = "x".repeat(500);
        assert_eq!(body_excerpt(long.as_bytes()).chars().count(), 201);
    }

    /// An https URL is spoken: a closed port is a transport error (transient, retried),
    /// not a refusal of the scheme.
    #[tokio::test]
    async fn https_to_a_closed_port_is_a_transport_error() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let client = Client::new(
            &format!("https://127.0.0.1:{port}"),
            None,
            "w1".into(),
            Duration::from_secs(5),
        )
        .unwrap();
        let e = client.stop().await.unwrap_err();
        let CallError::Transport(detail) = &e else {
            panic!("expected a transport error: {e}");
        };
        assert!(e.is_transient(), "{e}");
        assert!(detail.contains("https://127.0.0.1"), "{detail}");
        assert!(!detail.to_lowercase().contains("scheme"), "{detail}");
    }

    #[test]
    fn transient_errors() {
        let refused = |status: u16| CallError::Refused {
            status: StatusCode::from_u16(status).unwrap(),
            code: "c".into(),
            message: String::new(),
            retry_after: None,
        };
        assert!(CallError::Transport("reset".into()).is_transient());
        assert!(refused(503).is_transient());
        assert!(refused(500).is_transient());
        assert!(refused(429).is_transient());
        assert!(!refused(409).is_transient());
        assert!(!refused(401).is_transient());
        assert!(!refused(400).is_transient());
    }
}
