//! The result rows (one per metric: ours, raw, ratio) and their two renderings, a table and
//! JSON. Ratios are always "how many times the raw kernel cost ws-ckpt pays": our time / raw
//! time, or for rates raw rate / our rate, so 1.0 means "as cheap as the ioctl itself".
//!
//! This module must not measure anything.

use crate::stats::{ratio, Summary};
use serde_json::{json, Value};

/// What a row's numbers are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unit {
    /// Milliseconds (lower is better).
    Millis,
    /// Operations per second (higher is better).
    PerSecond,
    /// Kibibytes.
    KiB,
    /// A dimensionless factor (e.g. growth last/first).
    Factor,
}

impl Unit {
    fn name(self) -> &'static str {
        match self {
            Unit::Millis => "ms",
            Unit::PerSecond => "ops/s",
            Unit::KiB => "KiB",
            Unit::Factor => "x",
        }
    }
}

/// An issue-9 target a row is held to (printed with the row; nothing fails when missed).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Target {
    /// The ratio (cost multiple of the raw baseline) at most this.
    RatioAtMost(f64),
    /// Our median at most this, in the row's unit.
    OursAtMost(f64),
}

impl Target {
    /// `<= 1.2x`, `<= 300 ms`.
    fn text(self, unit: Unit) -> String {
        match self {
            Target::RatioAtMost(r) => format!("<= {r}x"),
            Target::OursAtMost(v) => format!("<= {} {}", num(v), unit.name()),
        }
    }

    /// Whether `m` meets it (`None` when the number it needs is missing).
    fn met(self, m: &Metric) -> Option<bool> {
        match self {
            Target::RatioAtMost(r) => m.ratio.map(|x| x <= r),
            Target::OursAtMost(v) => Some(m.ours.median <= v),
        }
    }
}

/// One metric.
#[derive(Debug, Clone)]
pub(crate) struct Metric {
    /// Short name.
    pub name: String,
    /// Unit of `ours` and `raw`.
    pub unit: Unit,
    /// ws-ckpt's numbers.
    pub ours: Summary,
    /// The raw kernel baseline, when there is one.
    pub raw: Option<Summary>,
    /// The ratio shown, computed from the medians (see [`Metric::new`]).
    pub ratio: Option<f64>,
    /// One sentence: what is compared with what.
    pub compares: String,
    /// The target it is held to, if any.
    pub target: Option<Target>,
}

impl Metric {
    /// A row whose ratio is our median over the raw median (raw over ours for rates).
    pub(crate) fn new(
        name: impl Into<String>,
        unit: Unit,
        ours: Summary,
        raw: Option<Summary>,
        compares: impl Into<String>,
    ) -> Metric {
        let r = raw.and_then(|raw| match unit {
            Unit::PerSecond => ratio(raw.median, ours.median),
            _ => ratio(ours.median, raw.median),
        });
        Metric {
            name: name.into(),
            unit,
            ours,
            raw,
            ratio: r,
            compares: compares.into(),
            target: None,
        }
    }

    /// The same row held to `target`.
    pub(crate) fn with_target(mut self, target: Option<Target>) -> Metric {
        self.target = target;
        self
    }

    /// "yes" / "NO" / "-" (no target or no number).
    fn met_text(&self) -> &'static str {
        match self.target.and_then(|t| t.met(self)) {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "-",
        }
    }
}

/// Format a number with about three significant digits.
fn num(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn cell(s: Option<Summary>) -> (String, String) {
    match s {
        Some(s) if s.n > 1 => (num(s.median), num(s.p90)),
        Some(s) => (num(s.median), "-".into()),
        None => ("-".into(), "-".into()),
    }
}

/// The table: one line per metric, then the legend of what each ratio compares.
pub(crate) fn table(metrics: &[Metric]) -> String {
    let header = [
        "metric", "unit", "n", "ours med", "ours p90", "raw med", "raw p90", "ratio", "target",
        "met",
    ];
    let mut rows: Vec<[String; 10]> = vec![header.map(String::from)];
    for m in metrics {
        let (om, op) = cell(Some(m.ours));
        let (rm, rp) = cell(m.raw);
        rows.push([
            m.name.clone(),
            m.unit.name().to_string(),
            m.ours.n.to_string(),
            om,
            op,
            rm,
            rp,
            m.ratio
                .map(|r| format!("{r:.2}"))
                .unwrap_or_else(|| "-".into()),
            m.target
                .map(|t| t.text(m.unit))
                .unwrap_or_else(|| "-".into()),
            m.met_text().to_string(),
        ]);
    }
    let mut widths = [0usize; 10];
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r.iter()) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for (i, r) in rows.iter().enumerate() {
        let mut line = String::new();
        for (j, c) in r.iter().enumerate() {
            if j == 0 {
                line.push_str(&format!("{c:<w$}", w = widths[0]));
            } else {
                line.push_str(&format!("  {c:>w$}", w = widths[j]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
        if i == 0 {
            out.push_str(&"-".repeat(widths.iter().sum::<usize>() + 2 * (widths.len() - 1)));
            out.push('\n');
        }
    }
    out.push_str(
        "\nratio = ours / raw for times, raw / ours for rates (1.00 = as cheap as the kernel):\n",
    );
    for m in metrics {
        out.push_str(&format!("  {}: {}\n", m.name, m.compares));
    }
    out
}

fn summary_json(s: Option<Summary>) -> Value {
    match s {
        Some(s) => json!({"n": s.n, "median": s.median, "p90": s.p90}),
        None => Value::Null,
    }
}

/// The same rows as JSON: `{"metrics":[{"name","unit","ours":{n,median,p90},"raw":…,"ratio","target","met","compares"}], …context}`.
pub(crate) fn json(metrics: &[Metric], context: Value) -> Value {
    let rows: Vec<Value> = metrics
        .iter()
        .map(|m| {
            json!({
                "name": m.name,
                "unit": m.unit.name(),
                "ours": summary_json(Some(m.ours)),
                "raw": summary_json(m.raw),
                "ratio": m.ratio,
                "target": m.target.map(|t| t.text(m.unit)),
                "met": m.target.and_then(|t| t.met(m)),
                "compares": m.compares,
            })
        })
        .collect();
    json!({"context": context, "metrics": rows})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_are_cost_multiples_for_times_and_rates() {
        let t = Metric::new(
            "t",
            Unit::Millis,
            Summary::single(3.0),
            Some(Summary::single(1.5)),
            "",
        );
        assert_eq!(t.ratio, Some(2.0));
        let r = Metric::new(
            "r",
            Unit::PerSecond,
            Summary::single(50.0),
            Some(Summary::single(100.0)),
            "",
        );
        assert_eq!(r.ratio, Some(2.0));
        let none = Metric::new("x", Unit::KiB, Summary::single(5.0), None, "")
            .with_target(Some(Target::OursAtMost(4.0)));
        assert_eq!(none.ratio, None);
        let t = t.with_target(Some(Target::RatioAtMost(2.0)));
        let text = table(&[t, r, none]);
        let words = |n: usize| -> Vec<String> {
            let line = text.lines().nth(n).unwrap_or_default();
            line.split_whitespace().map(str::to_string).collect()
        };
        let tail = |n: usize, k: usize| {
            let w = words(n);
            w[w.len() - k..].join(" ")
        };
        assert_eq!(words(2)[0], "t");
        assert_eq!(tail(2, 4), "2.00 <= 2x yes");
        assert_eq!(tail(3, 3), "2.00 - -");
        assert_eq!(tail(4, 5), "- <= 4.00 KiB NO");
    }
}
