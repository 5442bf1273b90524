//! The replay report: verdicts per exchange grouped by interface, totals, learned noise; and
//! its JSON form.

use std::io::Write as _;
use std::path::Path;

use deetune_protocols::Protocol;
use serde::Serialize;

use crate::diff::Difference;
use crate::rules::RulesFile;
use crate::{Origin, ReplayError};

/// The verdict of one exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Same response (after rules).
    Pass,
    /// A difference that is not noise.
    Regression,
    /// Differences, all of them noise (learned or ignored by a rule).
    NoiseOnly,
    /// Could not be replayed (see the error's origin).
    Error,
    /// Deliberately not replayed (see the reason).
    Skipped,
}

impl Verdict {
    /// Lower-case name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Regression => "regression",
            Self::NoiseOnly => "noise_only",
            Self::Error => "error",
            Self::Skipped => "skipped",
        }
    }
}

/// An exchange-level error in a report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErrorInfo {
    /// Target, recording or internal.
    pub origin: Origin,
    /// What happened.
    pub message: String,
}

/// What is known about a non-passing exchange.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Finding {
    /// A one-line summary of the request (`GET /api/x?y=1`, `HGETALL cart:1`, SQL).
    pub request: String,
    /// Differences (up to 50 kept).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub diffs: Vec<Difference>,
    /// Number of differences found, beyond the ones kept.
    #[serde(skip_serializing_if = "is_zero")]
    pub total_diffs: usize,
    /// The error, for error verdicts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
    /// Why it was skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The compared tree of the expected response (recorded, or the baseline's), for the
    /// side-by-side view; kept for the first `max_details` findings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected: Option<String>,
    /// The compared tree of the candidate's response.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actual: Option<String>,
    /// Diffs waiting for the final noise set (baseline mode).
    #[serde(skip)]
    pub(crate) pending: bool,
}

#[expect(
    clippy::trivially_copy_pass_by_ref,
    reason = "serde's skip_serializing_if signature"
)]
fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// The result of one exchange.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExchangeResult {
    /// Recorded connection id.
    pub conn: u64,
    /// Position on the recorded connection.
    pub seq: u64,
    /// Verdict.
    pub verdict: Verdict,
    /// Time from sending to the decoded response (candidate), microseconds.
    pub latency_us: u32,
    /// Details (none for passes).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub finding: Option<Box<Finding>>,
}

/// Counts per verdict.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Passed.
    pub pass: u64,
    /// Regressions.
    pub regression: u64,
    /// Noise only.
    pub noise_only: u64,
    /// Errors.
    pub error: u64,
    /// Skipped.
    pub skipped: u64,
}

impl Counts {
    pub(crate) fn add(&mut self, v: Verdict) {
        match v {
            Verdict::Pass => self.pass += 1,
            Verdict::Regression => self.regression += 1,
            Verdict::NoiseOnly => self.noise_only += 1,
            Verdict::Error => self.error += 1,
            Verdict::Skipped => self.skipped += 1,
        }
    }

    /// All exchanges counted.
    #[must_use]
    pub fn total(&self) -> u64 {
        self.pass + self.regression + self.noise_only + self.error + self.skipped
    }
}

/// One interface (`GET /api/orders`, `HGETALL`, `SELECT users`) and its exchanges.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InterfaceReport {
    /// The interface.
    pub name: String,
    /// Its protocol.
    pub protocol: Protocol,
    /// Counts per verdict.
    pub counts: Counts,
    /// Exchanges, by connection and position.
    pub exchanges: Vec<ExchangeResult>,
}

/// Totals over the whole replay.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    /// Exchanges read from the recording.
    pub read: u64,
    /// Left out by `--interface` / `--only-reads`.
    pub filtered: u64,
    /// Bad records in the recording (not replayed).
    pub input_errors: u64,
    /// Exchanges the candidate target answered.
    pub answered: u64,
    /// Counts per verdict.
    #[serde(flatten)]
    pub counts: Counts,
}

/// The overall outcome, which the CLI maps to its exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Exit 0: no regression and no error.
    Clean,
    /// Exit 1: regressions or target errors.
    Regressions,
    /// Exit 2: nothing could be replayed (no exchange was answered by the target).
    CouldNotRun,
}

/// Version of the JSON report format.
pub const REPORT_VERSION: u32 = 1;

/// A replay report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// `deetune-replay-report`.
    pub format: &'static str,
    /// [`REPORT_VERSION`].
    pub version: u32,
    /// When the replay started (Unix milliseconds).
    pub started_unix_ms: u64,
    /// How long it took.
    pub duration_ms: u64,
    /// Candidate targets (passwords hidden).
    pub targets: Vec<String>,
    /// Baseline targets (passwords hidden).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub baselines: Vec<String>,
    /// Totals.
    pub totals: Totals,
    /// The first bad records of the recording.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub input_errors: Vec<String>,
    /// Interfaces, by name.
    pub interfaces: Vec<InterfaceReport>,
    /// Noise learned from the baseline, as rules (what `--write-noise` writes).
    #[serde(skip_serializing_if = "is_default_rules")]
    pub learned_noise: RulesFile,
}

fn is_default_rules(r: &RulesFile) -> bool {
    *r == RulesFile::default()
}

impl Report {
    /// The outcome: [`Outcome::CouldNotRun`] when the target answered nothing,
    /// [`Outcome::Regressions`] when there are regressions or errors, else clean.
    #[must_use]
    pub fn outcome(&self) -> Outcome {
        let c = &self.totals.counts;
        if self.totals.answered == 0 {
            Outcome::CouldNotRun
        } else if c.regression > 0 || c.error > 0 {
            Outcome::Regressions
        } else {
            Outcome::Clean
        }
    }

    /// The JSON report.
    ///
    /// # Errors
    /// [`ReplayError::Write`] when the file cannot be written.
    pub fn write_json(&self, path: &Path) -> Result<(), ReplayError> {
        write_file(path, "json", |w| {
            serde_json::to_writer_pretty(&mut *w, self).map_err(std::io::Error::other)?;
            w.write_all(b"\n")
        })
    }

    /// The learned noise as a rules file (TOML), merged with nothing else.
    ///
    /// # Errors
    /// [`ReplayError::Write`] when the file cannot be written.
    pub fn write_noise(&self, path: &Path) -> Result<(), ReplayError> {
        write_file(path, "noise rules", |w| {
            w.write_all(
                b"# Noise learned by `deetune replay --baseline`: differences between the recording\n\
                  # and the baseline. Review, then pass with --rules.\n",
            )?;
            w.write_all(self.learned_noise.to_toml().as_bytes())
        })
    }

    /// A short text summary for terminals.
    #[must_use]
    pub fn summary(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        for i in &self.interfaces {
            let c = &i.counts;
            let _ = writeln!(
                s,
                "  {:<40} {:>6} pass {:>5} regression {:>5} noise {:>5} error {:>5} skipped",
                i.name, c.pass, c.regression, c.noise_only, c.error, c.skipped
            );
            for x in i
                .exchanges
                .iter()
                .filter(|x| matches!(x.verdict, Verdict::Regression | Verdict::Error))
                .take(3)
            {
                if let Some(f) = &x.finding {
                    let what = match (&f.error, f.diffs.iter().find(|d| !d.noise)) {
                        (Some(e), _) => format!("{} error: {}", e.origin, e.message),
                        (None, Some(d)) => format!(
                            "{}: expected {} got {}",
                            d.path,
                            d.expected.as_deref().unwrap_or("nothing"),
                            d.actual.as_deref().unwrap_or("nothing")
                        ),
                        _ => String::new(),
                    };
                    let _ = writeln!(
                        s,
                        "      conn {} #{}: {}",
                        x.conn,
                        x.seq,
                        crate::diff::clip(&what)
                    );
                }
            }
        }
        let t = &self.totals;
        let _ = writeln!(
            s,
            "{} exchanges read, {} replayed: {} pass, {} regression, {} noise-only, {} error, {} skipped ({} filtered, {} bad records) in {:.1}s",
            t.read,
            t.answered,
            t.counts.pass,
            t.counts.regression,
            t.counts.noise_only,
            t.counts.error,
            t.counts.skipped,
            t.filtered,
            t.input_errors,
            self.duration_ms as f64 / 1000.0
        );
        s
    }
}

pub(crate) fn write_file(
    path: &Path,
    what: &'static str,
    f: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> std::io::Result<()>,
) -> Result<(), ReplayError> {
    let err = |source| ReplayError::Write {
        what,
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::create(path).map_err(err)?;
    let mut w = std::io::BufWriter::new(file);
    f(&mut w).map_err(err)?;
    w.flush().map_err(err)
}
