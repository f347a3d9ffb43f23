//! `GET /v1/jobs/{thread_id}/stream`: the thread's events as Server-Sent Events.
//!
//! One SSE message per log event: `id:` its seq, `event:` its kind, `data:` the JSON of the
//! timeline (`EventView`). On connect — and on reconnect with `Last-Event-ID` (or
//! `?after=SEQ`) — the stored events after that seq come first, then live ones as this
//! process commits them, without gaps or duplicates: the live feed is subscribed before
//! the store is read, events at or below the last sent seq are skipped, and a gap (a
//! commit made by another process, or a subscriber that fell behind) is filled from the
//! store. Commits made elsewhere are also picked up by re-reading the store when the feed
//! is quiet (after 1 s, backing off to every 10 s). The stream ends after the terminal event
//! of the thread's latest run; keep-alive comments are sent every 15 s.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use oris_core::event::Event;
use oris_core::id::{Seq, ThreadId};
use tokio::sync::{broadcast, mpsc};

use super::query::{self, Params, bad};
use crate::error::{ApiError, Path, Query};
use crate::hub::Committed;
use crate::state::AppState;
use crate::wire::EventView;

const PAGE: usize = 256;
const KEEP_ALIVE: Duration = Duration::from_secs(15);
const RECHECK_MIN: Duration = Duration::from_secs(1);
const RECHECK_MAX: Duration = Duration::from_secs(10);

/// Stream the thread's events (Server-Sent Events).
#[utoipa::path(get, path = "/v1/jobs/{thread_id}/stream", tag = "jobs",
    params(("thread_id" = String, Path, description = "The thread"),
        ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this seq"),
        ("after" = Option<u64>, Query, description = "Same as Last-Event-ID (the header wins)")),
    responses((status = 200, description = "`text/event-stream`: `id` = seq, `event` = kind, `data` = the event", content_type = "text/event-stream", body = EventView),
        (status = 404, description = "`thread_not_found`", body = crate::error::ErrorEnvelope)))]
pub(crate) async fn stream(
    State(app): State<AppState>,
    Path(thread_id): Path<String>,
    headers: HeaderMap,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let t = query::thread(&thread_id)?;
    let p = Params::new(pairs, &["after"])?;
    let after = match headers.get("last-event-id") {
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .ok_or_else(|| bad("Last-Event-ID", "must be an event seq".into()))?,
        None => p.parsed::<u64>("after")?.unwrap_or(0),
    };
    // Subscribe before the first read of the store, so nothing committed in between is lost.
    let live = app.hub.subscribe();
    if app.store.thread(&t).await?.is_none() {
        return Err(oris_runtime::Error::ThreadNotFound(t).into());
    }
    let (tx, mut rx) = mpsc::channel::<SseEvent>(64);
    tokio::spawn(pump(app, t, Seq(after), live, tx));
    let events = futures_util::stream::poll_fn(move |cx| {
        rx.poll_recv(cx).map(|o| o.map(Ok::<_, Infallible>))
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response())
}

/// Why sending stopped.
enum Stop {
    /// The latest run's terminal event was sent (or had been): the stream is complete.
    Ended,
    /// The client went away, or the store failed (logged).
    Gone,
}

struct Pump {
    app: AppState,
    thread_id: ThreadId,
    last: Seq,
    tx: mpsc::Sender<SseEvent>,
}

impl Pump {
    async fn send(&mut self, e: &Event) -> Result<(), Stop> {
        let msg = SseEvent::default()
            .id(e.seq.0.to_string())
            .event(e.body.kind().as_str())
            .json_data(EventView::of(e))
            .map_err(|_| Stop::Gone)?;
        self.tx.send(msg).await.map_err(|_| Stop::Gone)?;
        self.last = e.seq;
        if e.body.is_terminal() && self.is_latest_run(e).await? {
            return Err(Stop::Ended);
        }
        Ok(())
    }

    async fn is_latest_run(&self, e: &Event) -> Result<bool, Stop> {
        let t = self
            .app
            .store
            .thread(&self.thread_id)
            .await
            .map_err(|err| {
                tracing::warn!(error = %err, "stream: store read failed");
                Stop::Gone
            })?;
        Ok(t.is_some_and(|t| t.last_run == Some(e.run_id)))
    }

    /// Sends every stored event after `last`; ends when the latest run is already over.
    async fn catch_up(&mut self) -> Result<(), Stop> {
        let store = self.app.store.clone();
        let failed = |err: oris_core::store::Error| {
            tracing::warn!(error = %err, "stream: store read failed");
            Stop::Gone
        };
        loop {
            let page = store
                .events(&self.thread_id, self.last, PAGE)
                .await
                .map_err(failed)?;
            for e in &page {
                self.send(e).await?;
            }
            if page.len() < PAGE {
                break;
            }
        }
        // Reconnected after the end: nothing more will come.
        let Some(t) = store.thread(&self.thread_id).await.map_err(failed)? else {
            return Err(Stop::Gone);
        };
        if t.head <= self.last
            && let Some(run) = t.last_run
            && store
                .run(run)
                .await
                .map_err(failed)?
                .is_some_and(|r| r.status.is_terminal())
        {
            return Err(Stop::Ended);
        }
        Ok(())
    }

    /// Live events of this thread until a gap, a lag or a quiet spell asks for a catch-up.
    async fn follow(
        &mut self,
        live: &mut broadcast::Receiver<std::sync::Arc<Committed>>,
        recheck: &mut Duration,
    ) -> Result<(), Stop> {
        loop {
            let msg = tokio::select! {
                m = live.recv() => m,
                _ = tokio::time::sleep(*recheck) => {
                    *recheck = (*recheck * 2).min(RECHECK_MAX);
                    return Ok(());
                }
                _ = self.app.shutdown.cancelled() => return Err(Stop::Gone),
                _ = self.tx.closed() => return Err(Stop::Gone),
            };
            match msg {
                Ok(c) if c.thread_id == self.thread_id => {
                    *recheck = RECHECK_MIN;
                    for e in &c.events {
                        if e.seq <= self.last {
                            continue;
                        }
                        if e.seq != self.last.next() {
                            return Ok(());
                        }
                        self.send(e).await?;
                    }
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => return Ok(()),
                Err(broadcast::error::RecvError::Closed) => return Err(Stop::Gone),
            }
        }
    }
}

async fn pump(
    app: AppState,
    thread_id: ThreadId,
    after: Seq,
    mut live: broadcast::Receiver<std::sync::Arc<Committed>>,
    tx: mpsc::Sender<SseEvent>,
) {
    let mut p = Pump {
        app,
        thread_id,
        last: after,
        tx,
    };
    let mut recheck = RECHECK_MIN;
    loop {
        if let Err(stop) = p.catch_up().await {
            return end(stop);
        }
        if let Err(stop) = p.follow(&mut live, &mut recheck).await {
            return end(stop);
        }
    }
}

fn end(stop: Stop) {
    match stop {
        Stop::Ended => tracing::debug!("stream complete"),
        Stop::Gone => tracing::debug!("stream closed"),
    }
}
