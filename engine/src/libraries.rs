//! Procedure libraries loaded, unloaded and upgraded while the engine
//! serves.
//!
//! A SOC loads its libraries when it starts, from the plan the master
//! writes into its region (see `numaproc_soc::plan`). Changing the
//! libraries is therefore a rolling restart: one SOC at a time is paused
//! (no new call reaches it, calls in flight end), stopped, and started with
//! the new plan, while the other SOCs serve. The first SOC to start with a
//! new plan gives the ids of new procedures (the plan says from which id);
//! the master recomputes them from the plan, checks the SOC's report
//! against them, and requires every later SOC to serve exactly the same.
//! If any SOC cannot, every SOC that took the new plan is restarted with
//! the old one: a change applies to all SOCs or to none.
//!
//! Ids are never given twice: an unloaded procedure's id stays vacant, so
//! a [`ProcId`] taken before an unload reaches no other procedure after it;
//! an upgraded library's procedures keep their ids by name.

use std::collections::HashSet;
use std::time::SystemTime;

use numaproc_ipc::layout::{NameRecord, SocLayout};
use numaproc_procs::{Origin, ProcId, Registry, check_name};
use numaproc_soc::plan::{LibraryPlan, ReportedLibrary, parse_report};

/// The name-table tag of a library procedure (see [`Origin::tag`]).
pub(crate) const LIBRARY_TAG: u32 = 2;

/// Longest library entry (a name or path inside the library directory).
pub const MAX_ENTRY_LEN: usize = 1024;

/// A library the engine serves.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LibraryInfo {
    /// Its name (from its descriptor).
    pub name: String,
    /// Its version.
    pub version: String,
    /// The entry it was loaded from (a name or path inside the library
    /// directory; `{soc}` stands for the SOC index).
    pub entry: String,
    /// The file SOC 0 loaded.
    pub path: String,
    /// Per SOC: the file it loaded (they differ with `{soc}`) and its
    /// state.
    #[serde(default)]
    pub socs: Vec<LibrarySoc>,
    /// Its procedures, with their ids.
    pub procedures: Vec<LibraryProc>,
    /// When this version was loaded (ms since the Unix epoch).
    pub loaded_at_ms: u64,
    /// Set for a server's catalog entry that did not load at its start:
    /// why (the library is not served; it is tried again at the next
    /// start, until it is unloaded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
}

/// A library in one SOC.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LibrarySoc {
    /// The SOC.
    pub soc: usize,
    /// The file it loaded (as the SOC reported it).
    pub path: String,
    /// `loaded` (a server's catalog entry that did not load lists no SOC;
    /// see [`LibraryInfo::failed`]).
    pub state: String,
}

/// A procedure of a library.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LibraryProc {
    /// Its name.
    pub name: String,
    /// Its id.
    pub id: u32,
}

/// Why a library could not be loaded, unloaded or upgraded. The engine
/// serves what it served before.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum LibraryError {
    /// The engine has no library directory.
    #[error("no library_dir is set: libraries cannot be loaded")]
    NoLibraryDir,
    /// The entry cannot name a library.
    #[error("library entry {entry:?}: {reason}")]
    BadEntry {
        /// The entry.
        entry: String,
        /// Why.
        reason: String,
    },
    /// No library of this name is loaded.
    #[error("no library named {0:?} is loaded")]
    NotLoaded(String),
    /// A SOC could not start with the change (every SOC serves what it
    /// served before).
    #[error("SOC {soc}: {reason}")]
    Soc {
        /// The SOC.
        soc: usize,
        /// Why.
        reason: String,
    },
    /// The server refuses this client the change: only the server's own
    /// user may load, unload or upgrade, whoever may call.
    #[error("not allowed: {0}")]
    NotAllowed(String),
    /// The request did not reach the server, or its answer did not come
    /// back (the change may or may not have happened).
    #[error("the request to the server failed: {0}")]
    Server(String),
}

/// What a change does, for the checks that depend on it.
#[derive(Debug, Clone)]
pub(crate) enum Change {
    /// A library added at the end.
    Load,
    /// The library at this position is taken out.
    Unload,
    /// The library at this position is replaced by another version of
    /// itself.
    Upgrade { at: usize, name: String },
}

/// The master's record of the libraries and procedures (in its own
/// memory).
#[derive(Debug, Clone)]
pub(crate) struct LibraryTable {
    /// The built-in and registered procedures.
    fixed: Registry,
    /// Every procedure now, at its id.
    pub registry: Registry,
    /// The libraries, in load order.
    pub list: Vec<LibraryInfo>,
}

impl LibraryTable {
    pub fn new(fixed: Registry) -> Self {
        Self {
            registry: fixed.clone(),
            fixed,
            list: Vec::new(),
        }
    }

    /// The entries of the libraries, in load order.
    pub fn entries(&self) -> Vec<String> {
        self.list.iter().map(|l| l.entry.clone()).collect()
    }

    /// The plan that loads `entries`, keeping every known procedure's id.
    pub fn plan(&self, entries: Vec<String>) -> LibraryPlan {
        LibraryPlan {
            libraries: entries,
            assigned: self
                .library_names()
                .into_iter()
                .map(|r| (r.id, r.name))
                .collect(),
            next: self.registry.next_id().index(),
        }
    }

    /// The library procedures every SOC serves now.
    pub fn library_names(&self) -> Vec<NameRecord> {
        self.registry
            .procedures()
            .filter(|(_, e)| matches!(e.origin, Origin::Library { .. }))
            .map(|(id, e)| NameRecord {
                name: e.name.clone(),
                tag: e.origin.tag(),
                label: e.origin.label(),
                id: id.index(),
            })
            .collect()
    }

    /// The table without the procedures of the library at `at` (for the
    /// time its unload runs: their names no longer resolve).
    pub fn without(&self, at: usize) -> Registry {
        let mut r = self.registry.clone();
        for p in &self.list[at].procedures {
            r.withdraw(ProcId::from_index(p.id));
        }
        r
    }

    /// Takes what the SOCs serve with plan `plan` (checked): the procedure
    /// table and the list of libraries.
    pub fn commit(
        &mut self,
        plan: &LibraryPlan,
        names: &[NameRecord],
        libraries: &[ReportedLibrary],
        reports: &[String],
    ) -> Result<(), String> {
        // Per SOC, the file of each library, as each SOC reported it (what
        // the others report is only shown: checked to be printable).
        let paths: Vec<Vec<String>> = reports
            .iter()
            .map(|r| match parse_report(r) {
                Ok(l) if l.len() == libraries.len() => l
                    .into_iter()
                    .map(|l| l.path.chars().filter(|c| !c.is_control()).collect())
                    .collect(),
                _ => vec!["(not reported)".to_owned(); libraries.len()],
            })
            .collect();
        let mut registry = self.fixed.clone();
        for r in names {
            registry
                .place_external(
                    ProcId::from_index(r.id),
                    &r.name,
                    Origin::from_parts(r.tag, &r.label),
                )
                .map_err(|e| e.to_string())?;
        }
        // Ids never go back: those of unloaded procedures stay vacant.
        registry.reserve_ids(self.registry.len());
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut at = 0;
        let mut list = Vec::with_capacity(libraries.len());
        for (k, (lib, entry)) in libraries.iter().zip(&plan.libraries).enumerate() {
            let procedures = names[at..at + lib.procedures]
                .iter()
                .map(|r| LibraryProc {
                    name: r.name.clone(),
                    id: r.id,
                })
                .collect();
            at += lib.procedures;
            // The same version from the same entry keeps its time.
            let loaded_at_ms = self
                .list
                .iter()
                .find(|l| l.entry == *entry && l.name == lib.name && l.version == lib.version)
                .map_or(now, |l| l.loaded_at_ms);
            list.push(LibraryInfo {
                name: lib.name.clone(),
                version: lib.version.clone(),
                entry: entry.clone(),
                path: lib.path.clone(),
                socs: paths
                    .iter()
                    .enumerate()
                    .map(|(soc, p)| LibrarySoc {
                        soc,
                        path: p[k].clone(),
                        state: "loaded".to_owned(),
                    })
                    .collect(),
                procedures,
                loaded_at_ms,
                failed: None,
            });
        }
        self.registry = registry;
        self.list = list;
        Ok(())
    }
}

/// `base` with its library procedures replaced by `list` (`(id, name,
/// origin)`, as a server lists them): what a client takes from its server.
pub(crate) fn with_libraries(
    base: &Registry,
    list: &[(u32, String, Origin)],
) -> Result<Registry, String> {
    let mut r = base.clone();
    let ids: Vec<ProcId> = r
        .procedures()
        .filter(|(_, e)| matches!(e.origin, Origin::Library { .. }))
        .map(|(id, _)| id)
        .collect();
    for id in ids {
        r.withdraw(id);
    }
    for (id, name, origin) in list {
        if !matches!(origin, Origin::Library { .. }) {
            continue;
        }
        // Bounded: a wild id must not make this process build a huge table.
        if *id as usize > base.len() + (1 << 20) {
            return Err(format!("procedure {name} has id {id}"));
        }
        r.place_external(ProcId::from_index(*id), name, origin.clone())
            .map_err(|e| e.to_string())?;
    }
    r.reserve_ids(base.len());
    Ok(r)
}

/// Checks a library entry before any SOC sees it.
pub(crate) fn check_entry(entry: &str) -> Result<(), LibraryError> {
    let bad = |reason: &str| LibraryError::BadEntry {
        entry: entry.to_owned(),
        reason: reason.to_owned(),
    };
    if entry.is_empty() {
        return Err(bad("empty"));
    }
    if entry.len() > MAX_ENTRY_LEN {
        return Err(bad(&format!("longer than {MAX_ENTRY_LEN} bytes")));
    }
    if entry.chars().any(char::is_control) {
        return Err(bad("holds a control character"));
    }
    Ok(())
}

/// Checks a plan's text fits a SOC's region.
pub(crate) fn plan_text(plan: &LibraryPlan) -> Result<String, String> {
    let text = plan.to_text();
    if text.len() > SocLayout::PLAN_CAPACITY {
        return Err(format!(
            "the library plan takes {} bytes, a SOC's region holds {}: too many libraries or procedures",
            text.len(),
            SocLayout::PLAN_CAPACITY
        ));
    }
    Ok(text)
}

/// Checks what the first SOC started with `plan` serves, from its name
/// table and its library report (both written by the SOC): every library
/// of the plan reported, in order, with its procedures; the ids those
/// procedures have are the ones the master computes from the plan. Returns
/// the libraries reported.
pub(crate) fn check_served(
    plan: &LibraryPlan,
    change: &Change,
    names: &[NameRecord],
    report: &str,
) -> Result<Vec<ReportedLibrary>, String> {
    let libs = parse_report(report)?;
    if libs.len() != plan.libraries.len() {
        return Err(format!(
            "it reports {} libraries, its plan has {}",
            libs.len(),
            plan.libraries.len()
        ));
    }
    let total = libs
        .iter()
        .try_fold(0usize, |n, l| n.checked_add(l.procedures));
    if total != Some(names.len()) {
        return Err(format!(
            "its library report and its name table disagree ({} procedures listed)",
            names.len()
        ));
    }
    let mut library_names = HashSet::new();
    let mut at = 0;
    for lib in &libs {
        if lib.name.is_empty() || lib.name.contains(char::is_whitespace) {
            return Err(format!("it reports a library named {:?}", lib.name));
        }
        if !library_names.insert(lib.name.as_str()) {
            return Err(format!(
                "library {} is loaded twice (upgrade it to load another version)",
                lib.name
            ));
        }
        let label = format!("{} {}", lib.name, lib.version);
        for r in &names[at..at + lib.procedures] {
            if r.tag != LIBRARY_TAG || r.label != label {
                return Err(format!(
                    "procedure {} is listed as {:?}, not as library {label}",
                    r.name, r.label
                ));
            }
        }
        at += lib.procedures;
    }
    let mut next = plan.next;
    let mut seen = HashSet::new();
    for r in names {
        check_name(&r.name).map_err(|e| e.to_string())?;
        if r.name.starts_with("sys_") || !seen.insert(r.name.as_str()) {
            return Err(format!(
                "it lists procedure {} twice or as built-in",
                r.name
            ));
        }
        let id = match plan.assigned.iter().find(|(_, n)| *n == r.name) {
            Some(&(id, _)) => id,
            None => {
                let id = next;
                next = next.checked_add(1).ok_or("procedure ids ran out")?;
                id
            }
        };
        if r.id != id {
            return Err(format!(
                "procedure {} has id {}, its plan gives it {id}",
                r.name, r.id
            ));
        }
    }
    if let Change::Upgrade { at, name } = change
        && libs.get(*at).is_none_or(|l| l.name != *name)
    {
        return Err(format!(
            "the new file is library {}, not {name}",
            libs.get(*at).map_or("(none)", |l| l.name.as_str())
        ));
    }
    Ok(libs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(name: &str, label: &str, id: u32) -> NameRecord {
        NameRecord {
            name: name.to_owned(),
            tag: 2,
            label: label.to_owned(),
            id,
        }
    }

    fn report(libs: &[(&str, &str, usize)]) -> String {
        numaproc_soc::plan::report_text(
            &libs
                .iter()
                .map(|&(name, version, procedures)| ReportedLibrary {
                    name: name.to_owned(),
                    version: version.to_owned(),
                    procedures,
                    path: format!("/lib/{name}.so"),
                })
                .collect::<Vec<_>>(),
        )
    }

    /// What a SOC serves is checked against the ids the master computes:
    /// a SOC that lies about an id, a count or a label is refused.
    #[test]
    fn served_tables_are_checked_against_the_plan() {
        let plan = LibraryPlan {
            libraries: vec!["a.so".into(), "b.so".into()],
            assigned: vec![(20, "b.y".into())],
            next: 30,
        };
        let good = [
            rec("a.x", "a 1", 30),
            rec("b.y", "b 2", 20),
            rec("b.z", "b 2", 31),
        ];
        let libs = check_served(
            &plan,
            &Change::Load,
            &good,
            &report(&[("a", "1", 1), ("b", "2", 2)]),
        )
        .unwrap();
        assert_eq!(libs.len(), 2);
        let two = report(&[("a", "1", 1), ("b", "2", 2)]);
        let lie = |names: &[NameRecord], report: &str| {
            check_served(&plan, &Change::Load, names, report).unwrap_err()
        };
        // An id other than the plan's.
        let mut wrong = good.clone();
        wrong[1].id = 21;
        assert!(lie(&wrong, &two).contains("has id 21, its plan gives it 20"));
        // A new procedure off the sequence.
        let mut wrong = good.clone();
        wrong[2].id = 99;
        assert!(lie(&wrong, &two).contains("its plan gives it 31"));
        // A label of another library.
        let mut wrong = good.clone();
        wrong[0].label = "b 2".into();
        assert!(lie(&wrong, &two).contains("not as library a 1"));
        // Counts that do not add up, a library missing, a name twice.
        assert!(lie(&good, &report(&[("a", "1", 1), ("b", "2", 1)])).contains("disagree"));
        assert!(lie(&good, &report(&[("a", "1", 3)])).contains("reports 1 libraries"));
        assert!(lie(&good, &report(&[("a", "1", 1), ("a", "2", 2)])).contains("loaded twice"));
        assert!(lie(&good, "garbage").contains("missing"));
        let mut twice = good.clone();
        twice[2].name = "b.y".into();
        assert!(lie(&twice, &two).contains("twice"));
        // An upgrade must load the same library.
        let up = Change::Upgrade {
            at: 1,
            name: "c".into(),
        };
        assert!(
            check_served(&plan, &up, &good, &two)
                .unwrap_err()
                .contains("is library b, not c")
        );
    }

    #[test]
    fn entries_are_checked() {
        assert!(check_entry("libx.so").is_ok());
        assert!(check_entry("").is_err());
        assert!(check_entry("a\nb").is_err());
        assert!(check_entry(&"a".repeat(MAX_ENTRY_LEN + 1)).is_err());
    }
}
