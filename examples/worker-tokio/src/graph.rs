//! The graph both modes share: the server validates inputs against it and shows it; the
//! workers execute it. Registering the same name and version on both sides is what makes a
//! run of `fulfil` version 1 dispatchable to these workers.

use std::time::Duration;

use oris::{
    CompiledGraph, Context, END, NodeError, NodePolicy, RetryPolicy, START, State, StateGraph,
};
use serde::{Deserialize, Serialize};

/// An order moving through fulfilment.
#[derive(Debug, Clone, Default, Serialize, Deserialize, State)]
#[serde(default)]
pub struct Order {
    /// The order's id.
    pub order_id: String,
    /// Amount to charge, in cents.
    pub amount_cents: u64,
    /// How long each node "works", in milliseconds (long enough to kill a worker mid-node
    /// in the walkthrough). Default 0.
    pub work_ms: u64,
    /// The stock reservation (a recorded step's result).
    pub reservation: String,
    /// The payment receipt (a recorded step's result).
    pub payment: String,
    /// The courier's tracking number (a recorded step's result).
    pub tracking: String,
    /// What happened, with the process that did it.
    #[reducer(append)]
    pub log: Vec<String>,
}

/// `reserve → charge → ship`. Every external call is a recorded step: once recorded, a
/// worker that continues the run after a crash reuses its result instead of calling again.
/// `charge` has a retry policy, and its first attempt of every run fails (a flaky payment
/// gateway), so every run shows a retry.
pub fn fulfil() -> anyhow::Result<CompiledGraph<Order>> {
    let retry = NodePolicy {
        retry: RetryPolicy::exponential(4)
            .initial_interval(Duration::from_millis(500))
            .max_interval(Duration::from_secs(5)),
        timeout: None,
    };
    Ok(StateGraph::<Order>::new("fulfil", "1")
        .node("reserve", |o: Order, ctx: Context| async move {
            let reservation: String = ctx
                .step("reserve-stock", async {
                    Ok(format!("rsv-{}-{}", o.order_id, std::process::id()))
                })
                .await?;
            work(&o).await;
            Ok::<_, NodeError>(
                OrderUpdate::default()
                    .reservation(reservation)
                    .log(vec![done(&ctx)]),
            )
        })
        .node_with("charge", retry, |o: Order, ctx: Context| async move {
            if ctx.attempt() == 1 {
                return Err(NodeError::new("payment gateway timed out"));
            }
            let payment: String = ctx
                .step("charge-card", async {
                    Ok(format!("pay-{}-{}c", o.order_id, o.amount_cents))
                })
                .await?;
            work(&o).await;
            Ok(OrderUpdate::default()
                .payment(payment)
                .log(vec![done(&ctx)]))
        })
        .node("ship", |o: Order, ctx: Context| async move {
            work(&o).await;
            let tracking: String = ctx
                .step("book-courier", async {
                    Ok(format!("trk-{}-{}", o.order_id, std::process::id()))
                })
                .await?;
            Ok(OrderUpdate::default()
                .tracking(tracking)
                .log(vec![done(&ctx)]))
        })
        .edge(START, "reserve")
        .edge("reserve", "charge")
        .edge("charge", "ship")
        .edge("ship", END)
        .compile()?)
}

async fn work(o: &Order) {
    tokio::time::sleep(Duration::from_millis(o.work_ms)).await;
}

/// `ship (attempt 1) by pid 1234`.
fn done(ctx: &Context) -> String {
    format!(
        "{} (attempt {}) by pid {}",
        ctx.node(),
        ctx.attempt(),
        std::process::id()
    )
}
