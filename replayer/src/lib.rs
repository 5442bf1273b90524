//! deetune-replayer (being built).
