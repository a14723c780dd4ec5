//! What a benchmark run prints and writes: one row per figure beside its
//! anchor from the same run, and the charts.

#[derive(Default)]
pub struct Report {
    rows: Vec<(String, String, String)>,
    charts: Vec<(String, crate::plot::Chart)>,
}

impl Report {
    pub fn row(&mut self, what: &str, figure: String, anchor: String) {
        println!("{what:<52} {figure:<28} {anchor}");
        self.rows.push((what.to_owned(), figure, anchor));
    }

    pub fn chart(&mut self, file: &str, chart: crate::plot::Chart) {
        self.charts.push((file.to_owned(), chart));
    }

    pub fn charts(&self) -> &[(String, crate::plot::Chart)] {
        &self.charts
    }

    pub fn markdown(&self) -> String {
        let mut s = String::from("| benchmark | figure | anchor (same run) |\n|---|---|---|\n");
        for (a, b, c) in &self.rows {
            s.push_str(&format!("| {a} | {b} | {c} |\n"));
        }
        s
    }
}
