//! A real server on 127.0.0.1:0 over SQLite on a temp file, test graphs that count their
//! node executions, and a small HTTP client.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use oris_core::graph::{END, START};
use oris_core::store::Store;
use oris_runtime::{CompiledGraph, NodeError, StateGraph};
use oris_server::{Server, ServerBuilder, ServerError};
use reqwest::{Method, StatusCode, header::HeaderMap};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, oneshot};

/// The state of the test graphs.
#[derive(
    Clone, Default, Debug, PartialEq, Serialize, Deserialize, oris_derive::State, utoipa::ToSchema,
)]
#[oris(crate = "::oris_core")]
#[serde(default)]
pub struct Doc {
    #[reducer(append)]
    pub log: Vec<String>,
    pub n: i64,
}

/// How often each node ran.
#[derive(Debug, Default)]
pub struct Counts(Mutex<HashMap<String, usize>>);

impl Counts {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }
    pub fn hit(&self, node: &str) {
        *self.0.lock().unwrap().entry(node.to_owned()).or_default() += 1;
    }
    pub fn get(&self, node: &str) -> usize {
        self.0.lock().unwrap().get(node).copied().unwrap_or(0)
    }
}

/// `draft` → `ask` (interrupt: answer `{"approve": bool}`) → `finish`.
pub fn approval(version: &str, counts: Arc<Counts>) -> CompiledGraph<Doc> {
    let (c1, c2, c3) = (counts.clone(), counts.clone(), counts);
    StateGraph::<Doc>::new("approval", version)
        .node("draft", move |s: Doc, _ctx| {
            c1.hit("draft");
            async move { Ok::<_, NodeError>(DocUpdate::default().log(vec!["draft".into()]).n(s.n + 1)) }
        })
        .node("ask", move |_s: Doc, ctx| {
            c2.hit("ask");
            async move {
                let answer: Value = ctx.interrupt(&json!({ "question": "approve?" })).await?;
                let ok = answer["approve"].as_bool().unwrap_or(false);
                Ok(DocUpdate::default().log(vec![if ok { "approved" } else { "rejected" }.into()]))
            }
        })
        .node("finish", move |s: Doc, _ctx| {
            c3.hit("finish");
            async move { Ok(DocUpdate::default().log(vec!["done".into()]).n(s.n + 1)) }
        })
        .edge(START, "draft")
        .edge("draft", "ask")
        .edge("ask", "finish")
        .edge("finish", END)
        .compile()
        .unwrap()
}

/// One node `inc`; when `gate` is given, each execution waits for a permit first.
pub fn count(counts: Arc<Counts>, gate: Option<Arc<Semaphore>>) -> CompiledGraph<Doc> {
    StateGraph::<Doc>::new("count", "1")
        .node("inc", move |s: Doc, _ctx| {
            counts.hit("inc");
            let gate = gate.clone();
            let counts = counts.clone();
            async move {
                if let Some(g) = gate {
                    g.acquire().await.unwrap().forget();
                }
                counts.hit("inc_done");
                Ok::<_, NodeError>(DocUpdate::default().n(s.n + 1).log(vec!["inc".into()]))
            }
        })
        .edge(START, "inc")
        .edge("inc", END)
        .compile()
        .unwrap()
}

pub async fn sqlite(dir: &tempfile::TempDir) -> Arc<dyn Store> {
    Arc::new(
        oris_sqlite::SqliteStore::open(
            dir.path().join("oris.db").to_str().unwrap(),
            oris_sqlite::SqliteOptions::default(),
        )
        .await
        .unwrap(),
    )
}

/// A running server.
pub struct Harness {
    pub url: String,
    pub http: reqwest::Client,
    pub token: Option<String>,
    pub server: Server,
    pub store: Arc<dyn Store>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), ServerError>>>,
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Reply {
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

impl Harness {
    /// Builds (with fast polling and short leases) and serves.
    pub async fn start(store: Arc<dyn Store>, builder: ServerBuilder) -> Harness {
        let server = builder
            .store(store.clone())
            .poll_interval(Duration::from_millis(50))
            .lease(Duration::from_secs(5), Duration::from_millis(500))
            .build()
            .await
            .unwrap();
        Self::serve(store, server).await
    }

    pub async fn serve(store: Arc<dyn Store>, server: Server) -> Harness {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = oneshot::channel::<()>();
        let token = server.bootstrap_token().map(str::to_owned);
        let task = tokio::spawn(server.clone().serve(listener, async move {
            let _ = rx.await;
        }));
        let h = Harness {
            url,
            http: reqwest::Client::new(),
            token,
            server,
            store,
            stop: Some(tx),
            task: Some(task),
        };
        // Serving and the pool are up once /readyz says so.
        for _ in 0..200 {
            if h.call(Method::GET, "/readyz", None).await.status == StatusCode::OK {
                return h;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("server did not become ready");
    }

    /// Stops the server (graceful shutdown) and waits for `serve` to return.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap().unwrap();
        }
    }

    pub fn with_token(&self, token: &str) -> Harness {
        Harness {
            url: self.url.clone(),
            http: self.http.clone(),
            token: Some(token.to_owned()),
            server: self.server.clone(),
            store: self.store.clone(),
            stop: None,
            task: None,
        }
    }

    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.url));
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    pub async fn send(r: reqwest::RequestBuilder) -> Reply {
        let resp = r.send().await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            body,
            text,
        }
    }

    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Reply {
        let mut r = self.request(method, path);
        if let Some(b) = body {
            r = r.json(&b);
        }
        Self::send(r).await
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.call(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.call(Method::POST, path, Some(body)).await
    }

    /// Waits until the thread's run settles; returns the job.
    pub async fn settle(&self, thread: &str) -> Value {
        for _ in 0..10 {
            let r = self
                .get(&format!("/v1/jobs/{thread}/wait?timeout=10s"))
                .await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.text);
            if r.body["timed_out"] == false {
                return r.body["job"].clone();
            }
        }
        panic!("thread {thread} did not settle");
    }

    /// Waits until the thread's run reaches `status`.
    pub async fn until_status(&self, thread: &str, status: &str) -> Value {
        for _ in 0..500 {
            let j = self.get(&format!("/v1/jobs/{thread}")).await.body;
            if j["status"] == status {
                return j;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("thread {thread} never reached {status}");
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}
