//! Errors: what stops a replay from running ([`ReplayError`]) and what fails one exchange
//! ([`SendError`], which becomes an error verdict and says where it came from).

use serde::Serialize;

/// Where an exchange-level failure came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// The target: connection refused, reset, timed out, login failed, … (a finding).
    Target,
    /// The recording: the exchange cannot be re-sent as recorded (bad input).
    Recording,
    /// deetune itself.
    Internal,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Target => "target",
            Self::Recording => "recording",
            Self::Internal => "internal",
        })
    }
}

/// One exchange could not be replayed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{origin}: {message}")]
pub struct SendError {
    /// Where it came from.
    pub origin: Origin,
    /// What happened, with context (address, operation).
    pub message: String,
}

impl SendError {
    pub(crate) fn target(message: impl Into<String>) -> Self {
        Self {
            origin: Origin::Target,
            message: message.into(),
        }
    }
    pub(crate) fn recording(message: impl Into<String>) -> Self {
        Self {
            origin: Origin::Recording,
            message: message.into(),
        }
    }
    pub(crate) fn internal(message: impl Into<String>) -> Self {
        Self {
            origin: Origin::Internal,
            message: message.into(),
        }
    }
}

/// The replay could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// A `--target` / `--baseline` URL is malformed.
    #[error("bad target `{spec}`: {reason}")]
    BadTarget {
        /// The text given.
        spec: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A rule (flag or rules file) is malformed.
    #[error("bad rule `{rule}`: {reason}")]
    BadRule {
        /// The rule text.
        rule: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The rules file could not be read or parsed.
    #[error("cannot read rules file {path}: {reason}")]
    RulesFile {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        reason: String,
    },
    /// A target is the recorded production server.
    #[error(
        "target {target} is the recorded production server {server} (connection {conn}); pass --allow-production-target to replay against it anyway"
    )]
    ProductionTarget {
        /// The target URL (password hidden).
        target: String,
        /// The recorded server address.
        server: std::net::SocketAddr,
        /// The recorded connection.
        conn: u64,
    },
    /// A `--ca-cert` file could not be read or holds no usable certificate.
    #[error("cannot use the CA certificate file {path}: {reason}")]
    CaCert {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        reason: String,
    },
    /// The tokio runtime could not start.
    #[error("cannot start the replay runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// Writing a report failed.
    #[error("cannot write the {what} report to {path}: {source}")]
    Write {
        /// json, junit, html, noise rules.
        what: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}
