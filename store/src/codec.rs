//! Versioned store values: one version byte, then the record as JSON (the same canonical
//! JSON a bundle line holds, so export copies bytes).

use serde::{de::DeserializeOwned, Serialize};

use crate::StoreError;

/// Version byte of every value this build writes (and the newest it reads).
pub(crate) const VALUE_VERSION: u8 = 1;

pub(crate) fn encode<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, StoreError> {
    let mut out = Vec::with_capacity(512);
    out.push(VALUE_VERSION);
    serde_json::to_writer(&mut out, value).map_err(|source| StoreError::Encode { what, source })?;
    Ok(out)
}

/// The JSON of a stored value, after checking its version.
pub(crate) fn body<'a>(what: &str, bytes: &'a [u8]) -> Result<&'a [u8], StoreError> {
    match bytes.split_first() {
        Some((&VALUE_VERSION, rest)) => Ok(rest),
        Some((&v, _)) if v > VALUE_VERSION => Err(StoreError::NewerFormat {
            what: what.to_owned(),
            found: u32::from(v),
            supported: u32::from(VALUE_VERSION),
        }),
        Some((&v, _)) => Err(StoreError::Corrupt {
            what: what.to_owned(),
            detail: format!("unknown value version {v}"),
        }),
        None => Err(StoreError::Corrupt {
            what: what.to_owned(),
            detail: "empty value".to_owned(),
        }),
    }
}

pub(crate) fn decode<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(body(what, bytes)?).map_err(|e| StoreError::Corrupt {
        what: what.to_owned(),
        detail: e.to_string(),
    })
}

/// Parses one JSON line. The line is checked as UTF-8 once, as a whole, rather than string by
/// string as `serde_json::from_slice` does, which is faster; a line that is not UTF-8 goes
/// through `from_slice` for its error (with the position).
pub(crate) fn from_json_line<T: serde::de::DeserializeOwned>(
    line: &[u8],
) -> Result<T, serde_json::Error> {
    match std::str::from_utf8(line) {
        Ok(text) => serde_json::from_str(text),
        Err(_) => serde_json::from_slice(line),
    }
}
