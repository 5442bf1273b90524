//! deetune-recorder (being built).
