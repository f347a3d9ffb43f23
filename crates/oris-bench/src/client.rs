//! The HTTP client of the servers the bench starts (the bench server of S1, S2 and S3's
//! HTTP part, `oris-crash serve` of S3's failover), and the admin token it provisions them
//! with.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use reqwest::{Method, RequestBuilder};
use serde_json::Value;

/// How long a server may take to start listening and be ready.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A fresh admin token: `oris_bench_<32 hex digits>` from the std hasher's random keys (the
/// form `oris_<key id>_<secret>` the server accepts).
pub fn token() -> String {
    use std::hash::{BuildHasher as _, RandomState};
    let a = RandomState::new().hash_one(Instant::now());
    let b = RandomState::new().hash_one(std::process::id());
    format!("oris_bench_{a:016x}{b:016x}")
}

/// A keep-alive HTTP client of one server, authenticated with its token; clones share the
/// connection pool.
#[derive(Debug, Clone)]
pub struct Api {
    http: reqwest::Client,
    base: Arc<str>,
    auth: Arc<str>,
}

impl Api {
    /// A client of the server at `base` (`http://HOST:PORT`) presenting `token`.
    ///
    /// # Errors
    /// If the HTTP client cannot be built.
    pub fn new(base: &str, token: &str) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(usize::MAX)
            .timeout(Duration::from_secs(120))
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Api {
            http,
            base: base.into(),
            auth: format!("Bearer {token}").into(),
        })
    }

    /// A request to `path` (from `/`), with the token.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .header(reqwest::header::AUTHORIZATION, &*self.auth)
    }

    /// Sends `req`; the body of a 2xx answer, an error naming `what` otherwise.
    ///
    /// # Errors
    /// If the request fails or the status is not 2xx.
    pub async fn send(&self, req: RequestBuilder, what: &str) -> anyhow::Result<Vec<u8>> {
        let resp = req.send().await.with_context(|| what.to_owned())?;
        let status = resp.status();
        let body = resp.bytes().await.with_context(|| what.to_owned())?;
        ensure!(
            status.is_success(),
            "{what}: HTTP {status}: {}",
            String::from_utf8_lossy(&body)
        );
        Ok(body.to_vec())
    }

    /// POSTs `body` to `path`; the JSON answer of a 2xx, an error otherwise.
    ///
    /// # Errors
    /// If the request fails, the status is not 2xx or the answer is not JSON.
    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let what = format!("POST {path}");
        let bytes = self
            .send(self.request(Method::POST, path).json(body), &what)
            .await?;
        serde_json::from_slice(&bytes).with_context(|| format!("{what}: bad JSON body"))
    }

    /// GETs `path`; the JSON answer of a 2xx, an error otherwise.
    ///
    /// # Errors
    /// If the request fails, the status is not 2xx or the answer is not JSON.
    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let what = format!("GET {path}");
        let bytes = self.send(self.request(Method::GET, path), &what).await?;
        serde_json::from_slice(&bytes).with_context(|| format!("{what}: bad JSON body"))
    }

    /// Polls `path` every 10 ms until `done` accepts its answer, for at most `within`.
    ///
    /// # Errors
    /// If a poll fails, or `done` accepts no answer in time.
    pub async fn until(
        &self,
        path: &str,
        what: &str,
        within: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        let deadline = Instant::now() + within;
        loop {
            let v = self.get(path).await?;
            if done(&v) {
                return Ok(v);
            }
            ensure!(
                Instant::now() < deadline,
                "{what}: not within {within:?}; last answer: {v}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until `/readyz` answers 200.
    ///
    /// # Errors
    /// If it does not within 60 s.
    pub async fn ready(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let r = self.http.get(format!("{}/readyz", self.base)).send().await;
            match r {
                Ok(r) if r.status().is_success() => return Ok(()),
                _ if Instant::now() >= deadline => {
                    bail!(
                        "the bench server at {} was not ready within 60 s",
                        self.base
                    )
                }
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }
}
