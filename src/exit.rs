//! Exit codes, in one place: 0 no regression (or success), 1 regressions found, 2 could not
//! run (bad flags, bad input, unreachable targets, internal errors).

use std::process::ExitCode;

/// 0: success, no regression.
pub(crate) fn success() -> ExitCode {
    ExitCode::from(0)
}

/// 1: the replay found regressions.
pub(crate) fn regressions() -> ExitCode {
    ExitCode::from(1)
}

/// 2: could not run.
pub(crate) fn could_not_run() -> ExitCode {
    ExitCode::from(2)
}

/// A closed stdout (`deetune … | head`) is not an error.
pub(crate) fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
