//! The replayer: re-sends recorded [`Exchange`](deetune_protocols::Exchange)s to staging
//! targets and diffs every response against the recorded one (or a baseline's), giving CI a
//! verdict.
//!
//! Main types: [`ReplayConfig`] (targets, pacing, filters, rules), [`replay`] /
//! [`replay_async`] (run over any iterator of exchanges, streamed), [`Report`] (verdicts per
//! exchange grouped by interface, [`Report::write_json`], [`Report::write_junit`],
//! [`Report::write_html`], [`Report::outcome`]) and [`RulesFile`] (the TOML rules format that
//! `--rules` reads and `--write-noise` writes).
//!
//! Each recorded connection becomes a session replayed in order on one connection to its
//! target; responses are decoded by the same `deetune_protocols` decoders as the recording,
//! so both sides are normalized identically.

mod config;
mod diff;
mod error;
mod html;
mod junit;
mod path;
mod report;
mod rules;
mod run;
mod send;
mod target;

pub use config::{parse_header, parse_rewrite, Pace, ReplayConfig};
pub use diff::Difference;
pub use error::{Origin, ReplayError, SendError};
pub use html::DIFF_ROW_COLOUR;
pub use report::{
    Counts, ErrorInfo, ExchangeResult, Finding, InterfaceReport, Outcome, Report, Totals, Verdict,
    REPORT_VERSION,
};
pub use rules::{InterfaceRules, RulesFile, Tolerance, DEFAULT_IGNORED_HEADERS};
pub use run::{replay, replay_async};
pub use target::{Scheme, Target};

/// Checks a path pattern (`body:$.items[*].price`, `header:etag`) as used by `--ignore`.
///
/// # Errors
/// [`ReplayError::BadRule`] with the reason.
pub fn check_path(pattern: &str) -> Result<(), ReplayError> {
    path::Path::parse(pattern)
        .map(|_| ())
        .map_err(|reason| ReplayError::BadRule {
            rule: pattern.to_owned(),
            reason,
        })
}
