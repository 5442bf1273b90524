//! deetune-ebpf (being built).
