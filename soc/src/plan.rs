//! The library plan a master writes into a SOC's region before each start
//! of the SOC, and the library report the SOC writes back.
//!
//! The plan says which libraries the SOC loads, in order, and which id
//! each procedure the engine already knows keeps (by name); a procedure
//! the engine does not know yet takes the next id from `next` on, in load
//! order. So a procedure keeps its id across restarts and upgrades, and
//! the ids of new ones are the same in every SOC.
//!
//! The report says what the SOC loaded: per library of the plan, in order,
//! its name, version, number of procedures and file. The master checks it
//! against the plan and the SOC's name table; it decides nothing from it
//! alone.

const PLAN_HEADER: &str = "numaproc-plan 1";
const REPORT_HEADER: &str = "numaproc-report 1";

/// Which libraries a SOC loads, and which ids their procedures take.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LibraryPlan {
    /// Library entries (names or paths inside the library directory; `{soc}`
    /// is replaced by the SOC index), in load order.
    pub libraries: Vec<String>,
    /// `(id, name)` of each library procedure the engine knows.
    pub assigned: Vec<(u32, String)>,
    /// The id of the first procedure the engine does not know yet.
    pub next: u32,
}

impl LibraryPlan {
    /// The plan as text. Entries and names never hold a line break (the
    /// master checks entries; names are checked at registration).
    pub fn to_text(&self) -> String {
        let mut s = format!("{PLAN_HEADER}\nnext {}\n", self.next);
        for l in &self.libraries {
            s.push_str(&format!("library {l}\n"));
        }
        for (id, name) in &self.assigned {
            s.push_str(&format!("assign {id} {name}\n"));
        }
        s
    }

    /// A plan from its text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut lines = text.lines();
        if lines.next() != Some(PLAN_HEADER) {
            return Err("the library plan is missing or of another version".to_owned());
        }
        let mut plan = Self::default();
        for line in lines {
            let bad = || format!("library plan line {line:?}");
            match line.split_once(' ') {
                Some(("next", v)) => plan.next = v.parse().map_err(|_| bad())?,
                Some(("library", v)) => plan.libraries.push(v.to_owned()),
                Some(("assign", v)) => {
                    let (id, name) = v.split_once(' ').ok_or_else(bad)?;
                    plan.assigned
                        .push((id.parse().map_err(|_| bad())?, name.to_owned()));
                }
                _ => return Err(bad()),
            }
        }
        Ok(plan)
    }
}

/// What a SOC says it loaded for one library of its plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportedLibrary {
    /// The library's name (from its descriptor).
    pub name: String,
    /// Its version.
    pub version: String,
    /// How many procedures it exported (they follow each other in the
    /// SOC's name table, in the plan's library order).
    pub procedures: usize,
    /// The file loaded.
    pub path: String,
}

/// The report as text.
pub fn report_text(libraries: &[ReportedLibrary]) -> String {
    let mut s = format!("{REPORT_HEADER}\n");
    for l in libraries {
        // The path last: the rest of the line, whatever it holds.
        s.push_str(&format!(
            "{}\t{}\t{}\t{}\n",
            l.name,
            l.version,
            l.procedures,
            l.path.replace('\n', "?")
        ));
    }
    s
}

/// A report from its text (written by a SOC: checked, never trusted).
pub fn parse_report(text: &str) -> Result<Vec<ReportedLibrary>, String> {
    let mut lines = text.lines();
    if lines.next() != Some(REPORT_HEADER) {
        return Err("its library report is missing or of another version".to_owned());
    }
    lines
        .map(|line| {
            let mut f = line.splitn(4, '\t');
            let (Some(name), Some(version), Some(count), Some(path)) =
                (f.next(), f.next(), f.next(), f.next())
            else {
                return Err(format!("its library report has a line {line:?}"));
            };
            Ok(ReportedLibrary {
                name: name.to_owned(),
                version: version.to_owned(),
                procedures: count
                    .parse()
                    .map_err(|_| format!("its library report has a line {line:?}"))?,
                path: path.to_owned(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_and_reports_round_trip() {
        let plan = LibraryPlan {
            libraries: vec!["a.so".into(), "b_{soc}.so".into()],
            assigned: vec![(20, "a.x".into()), (23, "b.y".into())],
            next: 31,
        };
        assert_eq!(LibraryPlan::parse(&plan.to_text()).unwrap(), plan);
        assert_eq!(
            LibraryPlan::parse("numaproc-plan 1\n").unwrap(),
            LibraryPlan::default()
        );
        assert!(LibraryPlan::parse("").is_err());
        assert!(LibraryPlan::parse("numaproc-plan 1\nnext x\n").is_err());
        assert!(LibraryPlan::parse("numaproc-plan 1\nassign 3\n").is_err());
        assert!(LibraryPlan::parse("numaproc-plan 1\nwhat 3\n").is_err());
        let libs = vec![ReportedLibrary {
            name: "a".into(),
            version: "1.0".into(),
            procedures: 2,
            path: "/lib/a\tb.so".into(),
        }];
        assert_eq!(parse_report(&report_text(&libs)).unwrap(), libs);
        assert!(parse_report("").is_err());
        assert!(parse_report("numaproc-report 1\na\t1\tx\tp\n").is_err());
        assert!(parse_report("numaproc-report 1\na\t1\n").is_err());
    }
}
