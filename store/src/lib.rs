//! deetune-store (being built).
