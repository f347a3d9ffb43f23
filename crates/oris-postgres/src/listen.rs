//! Wake-ups: a dedicated connection that `LISTEN`s on `oris_changed` and forwards the
//! thread ids it hears, reconnecting after the server restarts.

use std::time::Duration;

use oris_core::id::ThreadId;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, NoTls};

use crate::codec::describe;
use crate::queries::quote_ident;

/// What a [`Listener`] hears.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Wake {
    /// A commit created a run on this thread or changed a run's status, an interrupt of it
    /// was answered, an event was delivered to it, or a lease on its run was released.
    Changed(ThreadId),
    /// The listening connection was re-established after it broke: notifications sent
    /// meanwhile are lost, so whoever waits should look at the store again.
    Reconnected,
}

/// A stream of wake-ups from [`PostgresStore::listen`](crate::PostgresStore::listen).
///
/// Notifications are sent by PostgreSQL when the writing transaction commits, to every
/// listener of the store's schema on the database. Dropping the listener closes its
/// connection.
#[derive(Debug)]
pub struct Listener {
    rx: mpsc::Receiver<Wake>,
    task: JoinHandle<()>,
}

impl Listener {
    /// The next wake-up; `None` only if the listening task ended (it does not end on its
    /// own: it reconnects until the listener is dropped).
    ///
    /// Cancel safety: cancel-safe; no wake-up is lost by dropping the future.
    pub async fn recv(&mut self) -> Option<Wake> {
        self.rx.recv().await
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How many wake-ups may wait unread; beyond that the oldest are not dropped but the
/// connection's reading pauses (back-pressure) until the consumer catches up.
const BUFFER: usize = 1024;

/// Starts the listening task.
pub(crate) fn spawn(config: tokio_postgres::Config, url: String, channel: String) -> Listener {
    let (tx, rx) = mpsc::channel(BUFFER);
    let task = tokio::spawn(run(config, url, channel, tx));
    Listener { rx, task }
}

async fn run(config: tokio_postgres::Config, url: String, channel: String, tx: mpsc::Sender<Wake>) {
    let mut connected_before = false;
    let mut pause = Duration::from_millis(50);
    loop {
        match config.connect(NoTls).await {
            Ok((client, mut connection)) => {
                let (ntx, mut nrx) = mpsc::unbounded_channel();
                // The connection must be polled for the LISTEN to complete and for
                // notifications to arrive; it ends when the server goes away.
                let driver = tokio::spawn(async move {
                    loop {
                        match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                            Some(Ok(AsyncMessage::Notification(n))) => {
                                if ntx.send(n.payload().to_owned()).is_err() {
                                    return;
                                }
                            }
                            Some(Ok(_)) => {}
                            Some(Err(e)) => {
                                tracing::warn!(error = %describe(&e), "postgres listener connection failed");
                                return;
                            }
                            None => return,
                        }
                    }
                });
                if let Err(e) = client
                    .batch_execute(&format!("LISTEN {}", quote_ident(&channel)))
                    .await
                {
                    tracing::warn!(error = %describe(&e), url = %url, "postgres LISTEN failed");
                    driver.abort();
                } else {
                    pause = Duration::from_millis(50);
                    if connected_before && tx.send(Wake::Reconnected).await.is_err() {
                        return;
                    }
                    connected_before = true;
                    while let Some(payload) = nrx.recv().await {
                        let wake = match ThreadId::new(&payload) {
                            Ok(t) => Wake::Changed(t),
                            Err(_) => {
                                tracing::warn!(payload = %payload, "ignoring a notification that is not a thread id");
                                continue;
                            }
                        };
                        if tx.send(wake).await.is_err() {
                            return;
                        }
                    }
                    tracing::info!(url = %url, "postgres listener disconnected; reconnecting");
                }
                drop(client);
            }
            Err(e) => {
                tracing::debug!(error = %describe(&e), url = %url, "postgres listener cannot connect");
            }
        }
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}
