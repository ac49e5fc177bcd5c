//! Statistics and the result table.

use std::fmt::Write as _;

/// Median and p99 (nearest rank) of a sample, in nanoseconds.
#[derive(Clone, Copy, Debug)]
pub struct Summary {
    pub n: usize,
    pub median: i64,
    pub p99: i64,
    pub max: i64,
}

pub fn summarize(sample: &[i64]) -> Summary {
    let mut v = sample.to_vec();
    v.sort_unstable();
    let rank = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    Summary { n: v.len(), median: rank(0.5), p99: rank(0.99), max: *v.last().unwrap_or(&0) }
}

pub fn ms(ns: i64) -> String {
    format!("{:.2} ms", ns as f64 / 1e6)
}

pub fn ratio(a: i64, b: i64) -> String {
    if b == 0 { "-".into() } else { format!("{:.2}×", a as f64 / b as f64) }
}

/// One line of the table.
pub struct Row {
    pub scenario: String,
    pub measured: String,
    pub floor: String,
    pub ratio: String,
    pub target: String,
    /// `None`: informational, no target.
    pub pass: Option<bool>,
}

impl Row {
    pub fn verdict(&self) -> &'static str {
        match self.pass {
            Some(true) => "PASS",
            Some(false) => "MISS",
            None => "-",
        }
    }
}

#[derive(Default)]
pub struct Report {
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
}

impl Report {
    pub fn row(
        &mut self,
        scenario: impl Into<String>,
        measured: impl Into<String>,
        floor: impl Into<String>,
        ratio: impl Into<String>,
        target: impl Into<String>,
        pass: Option<bool>,
    ) {
        let row = Row {
            scenario: scenario.into(),
            measured: measured.into(),
            floor: floor.into(),
            ratio: ratio.into(),
            target: target.into(),
            pass,
        };
        println!(
            "  {} | {} | floor {} | {} | {} | {}",
            row.scenario,
            row.measured,
            row.floor,
            row.ratio,
            row.target,
            row.verdict()
        );
        self.rows.push(row);
    }

    pub fn note(&mut self, note: impl Into<String>) {
        let note = note.into();
        println!("  note: {note}");
        self.notes.push(note);
    }

    pub fn markdown(&self) -> String {
        let mut s = String::new();
        s.push_str("| scenario | measured | floor | ratio | target | result |\n");
        s.push_str("|---|---|---|---|---|---|\n");
        for r in &self.rows {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} |",
                r.scenario,
                r.measured,
                r.floor,
                r.ratio,
                r.target,
                r.verdict()
            );
        }
        if !self.notes.is_empty() {
            s.push('\n');
            for n in &self.notes {
                let _ = writeln!(s, "- {n}");
            }
        }
        s
    }
}
