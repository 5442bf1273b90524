//! The recorder: loads the eBPF programs, turns kernel events into ordered per-connection byte
//! streams ([`StreamEvent`]), decodes them into exchanges, builds the service topology, applies
//! recording tasks and saves what they match in the store.

mod events;

pub use events::{ConnInfo, GapReason, StreamEvent};
