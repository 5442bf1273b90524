//! JUnit XML: one testsuite per interface, one testcase per exchange; regressions are
//! failures, errors are errors, skipped exchanges are skipped.

use std::io::Write;
use std::path::Path;

use crate::report::{ExchangeResult, Report, Verdict};
use crate::ReplayError;

pub(crate) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // Characters XML 1.0 cannot carry.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

fn secs(us: u64) -> String {
    #[expect(clippy::cast_precision_loss, reason = "durations in reports")]
    let s = us as f64 / 1e6;
    format!("{s:.6}")
}

fn details(x: &ExchangeResult) -> String {
    let Some(f) = &x.finding else {
        return String::new();
    };
    let mut s = format!("request: {}\n", f.request);
    for d in &f.diffs {
        s.push_str(&format!(
            "{}{}: expected {} got {}\n",
            if d.noise { "(noise) " } else { "" },
            d.path,
            d.expected.as_deref().unwrap_or("nothing"),
            d.actual.as_deref().unwrap_or("nothing")
        ));
    }
    if f.total_diffs > f.diffs.len() {
        s.push_str(&format!(
            "… {} more differences\n",
            f.total_diffs - f.diffs.len()
        ));
    }
    s
}

impl Report {
    /// Writes the JUnit XML report.
    ///
    /// # Errors
    /// [`ReplayError::Write`] when the file cannot be written.
    pub fn write_junit(&self, path: &Path) -> Result<(), ReplayError> {
        crate::report::write_file(path, "junit", |w| self.junit_to(w))
    }

    /// Writes the JUnit XML to any writer.
    ///
    /// # Errors
    /// The writer's errors.
    pub fn junit_to(&self, w: &mut dyn Write) -> std::io::Result<()> {
        let c = &self.totals.counts;
        writeln!(w, r#"<?xml version="1.0" encoding="UTF-8"?>"#)?;
        writeln!(
            w,
            r#"<testsuites name="deetune replay" tests="{}" failures="{}" errors="{}" skipped="{}" time="{}">"#,
            c.total(),
            c.regression,
            c.error,
            c.skipped,
            secs(self.duration_ms * 1000)
        )?;
        for i in &self.interfaces {
            let ic = &i.counts;
            let time: u64 = i.exchanges.iter().map(|x| u64::from(x.latency_us)).sum();
            writeln!(
                w,
                r#"  <testsuite name="{}" tests="{}" failures="{}" errors="{}" skipped="{}" time="{}">"#,
                escape(&i.name),
                ic.total(),
                ic.regression,
                ic.error,
                ic.skipped,
                secs(time)
            )?;
            for x in &i.exchanges {
                write!(
                    w,
                    r#"    <testcase classname="deetune.{}" name="conn {} #{}" time="{}""#,
                    i.protocol,
                    x.conn,
                    x.seq,
                    secs(u64::from(x.latency_us))
                )?;
                match x.verdict {
                    Verdict::Pass => writeln!(w, "/>")?,
                    Verdict::NoiseOnly => writeln!(
                        w,
                        ">\n      <system-out>{}</system-out>\n    </testcase>",
                        escape(&format!("noise only\n{}", details(x)))
                    )?,
                    Verdict::Regression => {
                        let n = x
                            .finding
                            .as_ref()
                            .map_or(0, |f| f.diffs.iter().filter(|d| !d.noise).count());
                        writeln!(
                            w,
                            ">\n      <failure message=\"{}\" type=\"regression\">{}</failure>\n    </testcase>",
                            escape(&format!("{n} difference(s) from the expected response")),
                            escape(&details(x))
                        )?;
                    }
                    Verdict::Error => {
                        let (origin, msg) = x
                            .finding
                            .as_ref()
                            .and_then(|f| f.error.as_ref())
                            .map_or(("internal".to_owned(), String::new()), |e| {
                                (e.origin.to_string(), e.message.clone())
                            });
                        writeln!(
                            w,
                            ">\n      <error message=\"{}\" type=\"{}\">{}</error>\n    </testcase>",
                            escape(&msg),
                            escape(&origin),
                            escape(&details(x))
                        )?;
                    }
                    Verdict::Skipped => {
                        let reason = x
                            .finding
                            .as_ref()
                            .and_then(|f| f.reason.clone())
                            .unwrap_or_default();
                        writeln!(
                            w,
                            ">\n      <skipped message=\"{}\"/>\n    </testcase>",
                            escape(&reason)
                        )?;
                    }
                }
            }
            writeln!(w, "  </testsuite>")?;
        }
        writeln!(w, "</testsuites>")
    }
}
