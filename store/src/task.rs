//! Recording tasks as persisted: the policy a task records by, its state and its counters.
//! The recorder owns what they mean (matching, stopping); the store and bundles only keep them.

use serde::{Deserialize, Serialize};

/// A task id (`t-…`, unique in a store).
pub type TaskId = String;

/// What a task records. Every field is optional: an empty spec records everything.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TaskSpec {
    /// Human name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Client service glob (`web`, `web-*`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Server service glob.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Only this protocol (`http`, `redis`, `mysql`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<deetune_protocols::Protocol>,
    /// Interfaces: HTTP `METHOD path-glob`, Redis command names, SQL verbs (`SELECT`,
    /// `SELECT users`). Any one matching is enough; empty matches all.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<String>,
    /// Stop after this many seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_secs: Option<u64>,
    /// Stop after exactly this many recorded exchanges.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// Keep this fraction of matching exchanges (0 < rate ≤ 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sample: Option<f64>,
    /// Bodies larger than this are kept cut and flagged truncated (bytes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_body: Option<u64>,
    /// Extra header names to redact (the defaults always apply).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub redact_headers: Vec<String>,
    /// JSON paths in bodies to redact (`$.card.number`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub redact_json: Vec<String>,
}

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Recording.
    #[default]
    Running,
    /// Ended by its duration, its count, or `task stop`.
    Stopped,
    /// The daemon stopped while it was running; it can be resumed.
    Interrupted,
    /// Imported from a bundle.
    Imported,
}

/// Counters every task reports. Nothing is lost without a count.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TaskStats {
    /// Exchanges that matched the policy.
    pub matched: u64,
    /// Exchanges saved.
    pub recorded: u64,
    /// Matched but not saved because of a capture gap.
    pub dropped_gap: u64,
    /// Matched but not saved because the ring buffer overflowed (kernel-counted loss).
    pub dropped_ring_buffer: u64,
    /// Matched but not saved because a body was over the cap and the task asked to drop those.
    pub dropped_body_over_cap: u64,
    /// Matched but left out by sampling.
    pub dropped_sampling: u64,
    /// Saved with a body cut at the cap.
    pub truncated: u64,
    /// Milliseconds the task has spent running, over all its runs: a resumed task runs for
    /// what is left of its duration. Kept current about once a second while it runs, so a
    /// daemon killed without warning overstates what is left by at most that much.
    #[serde(skip_serializing_if = "is_zero")]
    pub running_ms: u64,
}

#[expect(
    clippy::trivially_copy_pass_by_ref,
    reason = "serde's skip_serializing_if signature"
)]
fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// A task as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// Id.
    pub id: TaskId,
    /// Policy.
    pub spec: TaskSpec,
    /// State.
    pub state: TaskState,
    /// Why it stopped (`duration`, `count`, `stopped by user`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_reason: Option<String>,
    /// Unix ms when it started.
    pub started_ms: u64,
    /// Unix ms when it stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_ms: Option<u64>,
    /// Counters.
    #[serde(default)]
    pub stats: TaskStats,
}
