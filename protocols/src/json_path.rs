//! JSON paths as users write them, for redaction rules (recorder) and diff rules (replayer):
//! `$.card.number`, `$.items[*].token`, `$['odd key'][0]`. One parser so both sides accept
//! exactly the same syntax.

/// One step of a JSON path.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum JsonStep {
    /// An object key (`.name` or `['name']`).
    Key(String),
    /// An array index (`[3]`).
    Index(usize),
    /// Any key or index (`.*` or `[*]`).
    Any,
}

/// Why a JSON path does not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonPathError {
    /// It does not start with `$`.
    NoRoot,
    /// `.` followed by nothing.
    EmptyKey,
    /// `[` without `]`.
    Unclosed,
    /// A bracket holding something other than an index, `*` or a quoted key.
    BadBracket,
    /// A character where `.` or `[` was expected.
    Unexpected,
}

impl JsonPathError {
    /// The reason as a fixed sentence fragment.
    #[must_use]
    pub fn reason(self) -> &'static str {
        match self {
            Self::NoRoot => "a path starts with `$`",
            Self::EmptyKey => "empty key after `.`",
            Self::Unclosed => "`[` without `]`",
            Self::BadBracket => "a bracket holds an index, `*` or a quoted key",
            Self::Unexpected => "expected `.` or `[`",
        }
    }
}

impl std::fmt::Display for JsonPathError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for JsonPathError {}

/// Parses `$…` into its steps (`$` alone is no step: the whole document).
///
/// # Errors
/// [`JsonPathError`] when the path does not start with `$` or a step is malformed.
pub fn parse_json_path(path: &str) -> Result<Vec<JsonStep>, JsonPathError> {
    let rest = path.strip_prefix('$').ok_or(JsonPathError::NoRoot)?;
    let b = rest.as_bytes();
    let mut steps = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'.' => {
                let start = i + 1;
                let mut end = start;
                while end < b.len() && b[end] != b'.' && b[end] != b'[' {
                    end += 1;
                }
                // `.` and `[` are ASCII, so these are char boundaries.
                let key = &rest[start..end];
                if key.is_empty() {
                    return Err(JsonPathError::EmptyKey);
                }
                steps.push(if key == "*" {
                    JsonStep::Any
                } else {
                    JsonStep::Key(key.to_owned())
                });
                i = end;
            }
            b'[' => {
                let close = rest[i..].find(']').ok_or(JsonPathError::Unclosed)? + i;
                let inner = rest[i + 1..close].trim();
                let step = if inner == "*" {
                    JsonStep::Any
                } else if let Ok(n) = inner.parse::<usize>() {
                    JsonStep::Index(n)
                } else if inner.len() >= 2
                    && ((inner.starts_with('\'') && inner.ends_with('\''))
                        || (inner.starts_with('"') && inner.ends_with('"')))
                {
                    JsonStep::Key(inner[1..inner.len() - 1].to_owned())
                } else {
                    return Err(JsonPathError::BadBracket);
                };
                steps.push(step);
                i = close + 1;
            }
            _ => return Err(JsonPathError::Unexpected),
        }
    }
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::*;
    use JsonStep::{Any, Index, Key};

    #[test]
    fn parses_every_step_form() {
        assert_eq!(parse_json_path("$"), Ok(vec![]));
        assert_eq!(
            parse_json_path("$.items[*].tökén['odd key'][\"q\"][3].*"),
            Ok(vec![
                Key("items".into()),
                Any,
                Key("tökén".into()),
                Key("odd key".into()),
                Key("q".into()),
                Index(3),
                Any,
            ])
        );
    }

    #[test]
    fn refuses_malformed_paths() {
        for (path, err) in [
            ("card.number", JsonPathError::NoRoot),
            ("$.", JsonPathError::EmptyKey),
            ("$.a..b", JsonPathError::EmptyKey),
            ("$[1", JsonPathError::Unclosed),
            ("$[x]", JsonPathError::BadBracket),
            ("$a", JsonPathError::Unexpected),
        ] {
            assert_eq!(parse_json_path(path), Err(err), "{path}");
        }
    }
}
