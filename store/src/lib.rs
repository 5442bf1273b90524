//! The embedded store (sled) and the portable recording bundle.

mod task;
mod topology;

pub use task::{TaskId, TaskRecord, TaskSpec, TaskState, TaskStats};
pub use topology::TopologyEdge;
