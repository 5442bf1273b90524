//! The recorder: loads the eBPF programs, turns kernel events into ordered per-connection byte
//! streams ([`StreamEvent`]), decodes them into exchanges, builds the service topology, applies
//! recording tasks and saves what they match in the store.

mod api;
mod capture;
mod client;
mod daemon;
mod engine;
mod events;
mod pipeline;
mod policy;
mod redact;
mod services;
mod tasks;
mod topology;

pub use api::{
    ApiError, ApiState, ExportAnswer, ExportRequest, Status, StoredExchange, MAX_REQUEST_BYTES,
};
pub use capture::{Capture, CaptureConfig, CaptureError, CaptureStats, KernelLosses};
pub use client::{Client, ClientError};
pub use daemon::{interrupt_running, run_daemon, DaemonError, RecorderConfig, DEFAULT_SOCKET};
pub use engine::{
    new_task, now_ms, record, BackgroundFlushSink, BundleSink, CaptureCounters, Command, Engine,
    EngineEnd, EngineOptions, EngineStats, EventSource, MemorySink, NoEvents, RecordError, Sink,
    SinkError, Staged, StoreSink,
};
pub use events::{ConnInfo, GapReason, StreamEvent};
pub use pipeline::{Pipeline, PipelineConfig, PipelineStats};
pub use policy::{Policy, PolicyError};
pub use redact::{JsonPath, Redactor, DEFAULT_HEADERS, REDACTED};
pub use services::{EndpointFacts, ProcCache, ServiceNamer, ServiceRule, ServiceRuleError};
pub use tasks::{reason, Loss, NotRunning, PairCache, Recorded, RecordedOut, TaskManager};
pub use topology::{is_error, EdgeId, EdgeKey, TopologyAggregator, MAX_EDGES, OTHER};
