//! The live display of `oris run --wait`, on stderr: a spinner with the current superstep
//! and nodes on a terminal (indicatif), plain lines otherwise.

use std::io::IsTerminal as _;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

#[derive(Debug)]
pub struct Progress {
    bar: Option<ProgressBar>,
    superstep: Option<u64>,
    done: Vec<String>,
}

impl Progress {
    pub fn new() -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = ProgressBar::new_spinner();
            b.set_style(
                ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            b.enable_steady_tick(Duration::from_millis(100));
            b.set_message("queued");
            b
        });
        Progress {
            bar,
            superstep: None,
            done: Vec::new(),
        }
    }

    fn say(&self, line: String) {
        match &self.bar {
            Some(b) => b.println(line),
            None => eprintln!("{line}"),
        }
    }

    /// One event of the followed run.
    pub fn event(&mut self, e: &Value) {
        let kind = e["kind"].as_str().unwrap_or_default();
        let node = e["node"].as_str().unwrap_or("-");
        if let Some(s) = e["superstep"].as_u64()
            && self.superstep != Some(s)
        {
            self.superstep = Some(s);
            self.done.clear();
            self.say(format!("superstep {s}"));
        }
        let line = match kind {
            "run_started" => Some("run started".to_owned()),
            "run_resumed" => Some("run resumed".to_owned()),
            "node_completed" => {
                self.done.push(node.to_owned());
                Some(format!("  node {node} completed"))
            }
            "node_failed" => Some(format!(
                "  node {node} failed: {}{}",
                e["data"]["error"]["message"].as_str().unwrap_or("error"),
                if e["data"]["retry_at"].is_null() {
                    ""
                } else {
                    " (retry scheduled)"
                }
            )),
            "interrupt_raised" => Some(format!(
                "  node {node} raised {} asking {}",
                e["data"]["interrupt_id"].as_str().unwrap_or("-"),
                e["data"]["payload"]
            )),
            "interrupt_resumed" => Some(format!(
                "  {} answered",
                e["data"]["interrupt_id"].as_str().unwrap_or("-")
            )),
            "step_recorded" => Some(format!(
                "  node {node} step {}",
                e["data"]["name"].as_str().unwrap_or("-")
            )),
            _ => None,
        };
        if let Some(l) = line {
            self.say(l);
        }
        if let Some(b) = &self.bar {
            b.set_message(match self.superstep {
                Some(s) => format!("superstep {s}: {} done", self.done.join(", ")),
                None => kind.to_owned(),
            });
        }
    }

    /// The run ended or suspended with `status`.
    pub fn finish(&mut self, status: &str) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
        eprintln!("run {status}");
    }
}
