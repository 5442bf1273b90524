//! The self-contained HTML report: totals, one section per interface, and for every
//! non-passing exchange the differences and the two responses side by side. No external
//! assets: styles are inline.

use std::io::Write;
use std::path::Path;

use crate::junit::escape;
use crate::report::{Report, Verdict};
use crate::ReplayError;

/// Background of a regressed difference row (tests look for this colour in a screenshot).
pub const DIFF_ROW_COLOUR: (u8, u8, u8) = (0xff, 0xc8, 0xc8);

const STYLE: &str = "
body{font-family:system-ui,sans-serif;margin:24px;color:#1d1d1f;background:#fff}
h1{font-size:22px}h2{font-size:18px;margin-top:28px}
table{border-collapse:collapse;margin:8px 0;width:100%}
td,th{border:1px solid #d0d0d0;padding:4px 8px;text-align:left;vertical-align:top;font-size:13px}
th{background:#f3f3f3}
.pass{color:#1a7f37}.regression{color:#b00020;font-weight:bold}.noise_only{color:#8a6d00}
.error{color:#6f42c1;font-weight:bold}.skipped{color:#666}
tr.diff td{background:#ffc8c8}
tr.noise td{background:#fff3c4}
pre{margin:0;white-space:pre-wrap;word-break:break-all;font-size:12px}
.side{display:flex;gap:12px}.side>div{flex:1;min-width:0;border:1px solid #d0d0d0;padding:6px}
details{margin:6px 0 14px 0}summary{cursor:pointer}
";

impl Report {
    /// Writes the HTML report.
    ///
    /// # Errors
    /// [`ReplayError::Write`] when the file cannot be written.
    pub fn write_html(&self, path: &Path) -> Result<(), ReplayError> {
        crate::report::write_file(path, "html", |w| self.html_to(w))
    }

    /// Writes the HTML report to any writer.
    ///
    /// # Errors
    /// The writer's errors.
    pub fn html_to(&self, w: &mut dyn Write) -> std::io::Result<()> {
        let t = &self.totals;
        let c = &t.counts;
        write!(
            w,
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>deetune replay report</title><style>{STYLE}</style></head><body>\n"
        )?;
        writeln!(w, "<h1>deetune replay</h1>")?;
        writeln!(
            w,
            "<p>Targets: {}{}</p>",
            escape(&self.targets.join(", ")),
            if self.baselines.is_empty() {
                String::new()
            } else {
                format!("; baselines: {}", escape(&self.baselines.join(", ")))
            }
        )?;
        writeln!(
            w,
            "<table><tr><th>read</th><th>answered</th><th>pass</th><th>regression</th><th>noise only</th><th>error</th><th>skipped</th><th>filtered</th></tr>\
             <tr><td>{}</td><td>{}</td><td class=pass>{}</td><td class=regression>{}</td><td class=noise_only>{}</td><td class=error>{}</td><td class=skipped>{}</td><td>{}</td></tr></table>",
            t.read, t.answered, c.pass, c.regression, c.noise_only, c.error, c.skipped, t.filtered
        )?;
        for i in &self.interfaces {
            let ic = &i.counts;
            writeln!(
                w,
                "<h2>{} <small>({})</small></h2><p><span class=pass>{} pass</span> · <span class=regression>{} regression</span> · <span class=noise_only>{} noise only</span> · <span class=error>{} error</span> · <span class=skipped>{} skipped</span></p>",
                escape(&i.name),
                i.protocol,
                ic.pass,
                ic.regression,
                ic.noise_only,
                ic.error,
                ic.skipped
            )?;
            for x in i.exchanges.iter().filter(|x| x.verdict != Verdict::Pass) {
                let Some(f) = &x.finding else { continue };
                writeln!(
                    w,
                    "<details {}><summary><span class={}>{}</span> conn {} #{} — <code>{}</code></summary>",
                    if x.verdict == Verdict::Regression { "open" } else { "" },
                    x.verdict.as_str(),
                    x.verdict.as_str().replace('_', " "),
                    x.conn,
                    x.seq,
                    escape(&f.request)
                )?;
                if let Some(e) = &f.error {
                    writeln!(
                        w,
                        "<p class=error>{} error: {}</p>",
                        e.origin,
                        escape(&e.message)
                    )?;
                }
                if let Some(r) = &f.reason {
                    writeln!(w, "<p class=skipped>{}</p>", escape(r))?;
                }
                if !f.diffs.is_empty() {
                    writeln!(
                        w,
                        "<table><tr><th>path</th><th>expected</th><th>actual</th></tr>"
                    )?;
                    for d in &f.diffs {
                        writeln!(
                            w,
                            "<tr class={}><td><code>{}</code></td><td><pre>{}</pre></td><td><pre>{}</pre></td></tr>",
                            if d.noise { "noise" } else { "diff" },
                            escape(&d.path),
                            escape(d.expected.as_deref().unwrap_or("(missing)")),
                            escape(d.actual.as_deref().unwrap_or("(missing)"))
                        )?;
                    }
                    writeln!(w, "</table>")?;
                }
                if let (Some(e), Some(a)) = (&f.expected, &f.actual) {
                    writeln!(
                        w,
                        "<div class=side><div><b>expected</b><pre>{}</pre></div><div><b>actual</b><pre>{}</pre></div></div>",
                        escape(e),
                        escape(a)
                    )?;
                }
                writeln!(w, "</details>")?;
            }
        }
        writeln!(w, "</body></html>")
    }
}
