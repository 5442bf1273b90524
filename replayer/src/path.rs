//! Paths into a normalized response (`status`, `header:etag`, `body:$.items[0].price`,
//! `value:$[1]`, `result:$.sets[0].rows[2].name`) and the patterns rules use to match them
//! (`[*]` and `.*` match any index or key; a pattern also matches everything below it).

use std::fmt::Write as _;

/// One step of a path (`Any` in patterns only: any key or index). The JSON part is parsed
/// by the parser the recorder's redaction rules use, so both accept the same syntax.
pub(crate) use deetune_protocols::JsonStep as Seg;

/// A concrete path or a pattern: the section (`status`, `header`, `body`, `value`,
/// `result`) then the steps below it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Path(pub(crate) Vec<Seg>);

impl Path {
    /// Parses a path pattern as written by users.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (section, rest) = match text.split_once(':') {
            Some((s, r)) => (s.trim(), Some(r.trim())),
            None => (text, None),
        };
        let section = section.to_ascii_lowercase();
        let mut segs = vec![Seg::Key(section.clone())];
        match section.as_str() {
            "status" => {
                if rest.is_some() {
                    return Err("`status` takes no path".to_owned());
                }
            }
            "header" => {
                let name = rest.ok_or("expected `header:NAME`")?;
                if name.is_empty() {
                    return Err("expected `header:NAME`".to_owned());
                }
                segs.push(if name == "*" {
                    Seg::Any
                } else {
                    Seg::Key(name.to_ascii_lowercase())
                });
            }
            "body" | "value" | "result" => {
                if let Some(rest) = rest {
                    segs.extend(parse_json_path(rest)?);
                }
            }
            other => {
                return Err(format!(
                    "unknown section `{other}` (expected status, header, body, value or result)"
                ))
            }
        }
        Ok(Self(segs))
    }

    pub(crate) fn child_key(&self, k: &str) -> Self {
        let mut v = self.0.clone();
        v.push(Seg::Key(k.to_owned()));
        Self(v)
    }

    pub(crate) fn child_index(&self, i: usize) -> Self {
        let mut v = self.0.clone();
        v.push(Seg::Index(i));
        Self(v)
    }

    /// Whether this pattern matches `path` (or an ancestor of it).
    pub(crate) fn matches(&self, path: &Self) -> bool {
        self.0.len() <= path.0.len()
            && self.0.iter().zip(&path.0).all(|(p, c)| match (p, c) {
                (Seg::Any, _) => true,
                (Seg::Key(a), Seg::Key(b)) => a == b,
                (Seg::Index(a), Seg::Index(b)) => a == b,
                _ => false,
            })
    }

    /// The same path with every index replaced by `[*]`: how learned noise generalises.
    pub(crate) fn generalized(&self) -> Self {
        Self(
            self.0
                .iter()
                .map(|s| match s {
                    Seg::Index(_) => Seg::Any,
                    other => other.clone(),
                })
                .collect(),
        )
    }
}

impl std::fmt::Display for Path {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut it = self.0.iter();
        let Some(Seg::Key(section)) = it.next() else {
            return f.write_str("$");
        };
        f.write_str(section)?;
        if section == "header" {
            match it.next() {
                Some(Seg::Key(k)) => write!(f, ":{k}")?,
                Some(_) => f.write_str(":*")?,
                None => {}
            }
            return Ok(());
        }
        let rest: Vec<&Seg> = it.collect();
        if rest.is_empty() {
            return Ok(());
        }
        let mut s = String::from(":$");
        for seg in rest {
            match seg {
                Seg::Key(k) if is_plain(k) => {
                    let _ = write!(s, ".{k}");
                }
                Seg::Key(k) => {
                    let _ = write!(s, "['{}']", k.replace('\\', "\\\\").replace('\'', "\\'"));
                }
                Seg::Index(i) => {
                    let _ = write!(s, "[{i}]");
                }
                Seg::Any => s.push_str("[*]"),
            }
        }
        f.write_str(&s)
    }
}

fn is_plain(k: &str) -> bool {
    !k.is_empty()
        && k != "*"
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn parse_json_path(text: &str) -> Result<Vec<Seg>, String> {
    deetune_protocols::parse_json_path(text).map_err(|e| format!("{e} in `{text}`"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_matches() {
        for t in [
            "status",
            "header:etag",
            "body:$.items[*].updated_at",
            "body:$['a b'][3]",
            "value:$[0]",
            "result:$.sets[0].rows[*].price",
        ] {
            assert_eq!(Path::parse(t).unwrap().to_string(), t);
        }
        let p = Path::parse("body:$.items[*].updated_at").unwrap();
        let c = Path::parse("body:$.items[4].updated_at").unwrap();
        assert!(p.matches(&c));
        assert!(Path::parse("body:$.items").unwrap().matches(&c));
        assert!(!Path::parse("body:$.other").unwrap().matches(&c));
        assert_eq!(c.generalized(), p);
        assert!(Path::parse("Header:ETag")
            .unwrap()
            .matches(&Path::parse("header:etag").unwrap()));
        for bad in ["nope:$.a", "body:a.b", "body:$[x", "header:", "status:$.a"] {
            assert!(Path::parse(bad).is_err(), "{bad}");
        }
    }
}
