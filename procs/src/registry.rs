//! The procedure registry: names, ids and function pointers.
//!
//! Ids are indices into the registry. Built-in and registered procedures
//! take theirs at registration, before the SOCs start; library procedures
//! take theirs when their library is first loaded, and keep them across
//! restarts and upgrades. An id is never given to another procedure: an
//! unloaded procedure leaves a vacancy ([`ProcKind::Vacant`]) that stays
//! empty. The master and every SOC place each procedure at the same index,
//! so a name is resolved once and each call dispatches by index.

use std::collections::HashMap;

use crate::{OutputBuf, ProcContext, ProcError, sys};

/// Longest procedure name, in bytes.
pub const MAX_NAME_LEN: usize = 63;

/// A procedure: input bytes in, output bytes out, or an error.
pub type ProcFn =
    fn(ctx: &ProcContext<'_>, input: &[u8], output: &mut OutputBuf<'_>) -> Result<(), ProcError>;

/// The index of a procedure in its engine's registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProcId(u32);

impl ProcId {
    /// The id of the procedure at `index` of a registry (the number that
    /// travels in a slot).
    #[inline]
    pub fn from_index(index: u32) -> Self {
        Self(index)
    }

    /// Its index in the registry.
    #[inline]
    pub fn index(self) -> u32 {
        self.0
    }
}

/// Where a procedure comes from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// Built into numaproc (`sys_*`).
    Builtin,
    /// Registered as a Rust function pointer before the start.
    Registered,
    /// Exported by a procedure library.
    Library {
        /// The library's name.
        name: String,
        /// The library's version.
        version: String,
    },
}

impl Origin {
    /// A small number for the shared name table.
    pub fn tag(&self) -> u32 {
        match self {
            Self::Builtin => 0,
            Self::Registered => 1,
            Self::Library { .. } => 2,
        }
    }

    /// A short text for the shared name table: empty, or `name version`.
    pub fn label(&self) -> String {
        match self {
            Self::Library { name, version } => format!("{name} {version}"),
            _ => String::new(),
        }
    }

    /// The inverse of [`Origin::tag`] and [`Origin::label`].
    pub fn from_parts(tag: u32, label: &str) -> Self {
        match tag {
            0 => Self::Builtin,
            1 => Self::Registered,
            _ => {
                let (name, version) = label.split_once(' ').unwrap_or((label, ""));
                Self::Library {
                    name: name.to_owned(),
                    version: version.to_owned(),
                }
            }
        }
    }
}

/// How a procedure is run.
#[derive(Debug, Clone, Copy)]
pub enum ProcKind {
    /// A Rust function of this process.
    Rust(ProcFn),
    /// A C-ABI function of a library loaded in this process.
    Library(numaproc_abi::ProcCFn),
    /// Runs only in the SOCs (a library procedure seen from the master).
    External,
    /// No procedure: an id not given yet, or whose procedure was unloaded
    /// (never given again).
    Vacant,
}

/// One registered procedure.
#[derive(Debug, Clone)]
pub struct ProcEntry {
    /// Its name.
    pub name: String,
    /// Where it comes from.
    pub origin: Origin,
    /// How to run it.
    pub kind: ProcKind,
}

/// Why a registration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RegisterError {
    /// Empty or longer than [`MAX_NAME_LEN`] bytes.
    #[error("procedure name {name:?} must be 1 to {MAX_NAME_LEN} bytes long, it has {len}")]
    Length {
        /// The name.
        name: String,
        /// Its length.
        len: usize,
    },
    /// A byte outside `[A-Za-z0-9_.:-]`.
    #[error(
        "procedure name {name:?} may only contain ASCII letters, digits and '_' '.' ':' '-' (found {found:?})"
    )]
    Charset {
        /// The name.
        name: String,
        /// The first bad character.
        found: char,
    },
    /// `sys_` names belong to built-in procedures.
    #[error("procedure name {0:?} uses the reserved prefix \"sys_\" (built-in procedures only)")]
    Reserved(String),
    /// The name is taken.
    #[error("procedure name {0:?} is already registered")]
    Duplicate(String),
    /// The id is taken by another procedure, or belongs to the built-in
    /// and registered ones.
    #[error("procedure id {id} for {name:?} is taken")]
    IdTaken {
        /// The name.
        name: String,
        /// The id.
        id: u32,
    },
    /// More than `u32::MAX` procedures.
    #[error("too many procedures")]
    TooMany,
}

/// Checks a procedure name: 1 to 63 bytes of `[A-Za-z0-9_.:-]`.
pub fn check_name(name: &str) -> Result<(), RegisterError> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(RegisterError::Length {
            name: name.to_owned(),
            len: name.len(),
        });
    }
    if let Some(found) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-')))
    {
        return Err(RegisterError::Charset {
            name: name.to_owned(),
            found,
        });
    }
    Ok(())
}

/// The procedures of an engine, indexed by [`ProcId`].
#[derive(Debug, Clone)]
pub struct Registry {
    entries: Vec<ProcEntry>,
    by_name: HashMap<String, ProcId>,
    /// Ids below this one are built-in or registered.
    fixed: usize,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl Registry {
    /// A registry holding the built-in `sys_*` procedures.
    pub fn new() -> Self {
        let mut r = Self {
            entries: Vec::new(),
            by_name: HashMap::new(),
            fixed: 0,
        };
        for (name, func) in sys::BUILTINS {
            r.insert(name, Origin::Builtin, ProcKind::Rust(*func))
                .expect("built-in names are valid and unique");
        }
        r.fixed = r.entries.len();
        r
    }

    /// Registers a user procedure. `sys_*` names are refused.
    pub fn register(&mut self, name: &str, func: ProcFn) -> Result<ProcId, RegisterError> {
        let id = self.insert_user(name, Origin::Registered, ProcKind::Rust(func))?;
        // Registered procedures are never withdrawn or replaced.
        self.fixed = self.entries.len();
        Ok(id)
    }

    /// Registers a library procedure. `sys_*` names are refused.
    pub fn register_library(
        &mut self,
        name: &str,
        origin: Origin,
        func: numaproc_abi::ProcCFn,
    ) -> Result<ProcId, RegisterError> {
        self.insert_user(name, origin, ProcKind::Library(func))
    }

    /// Registers a procedure that runs only in the SOCs (the master's view
    /// of a library procedure).
    pub fn register_external(
        &mut self,
        name: &str,
        origin: Origin,
    ) -> Result<ProcId, RegisterError> {
        self.insert_user(name, origin, ProcKind::External)
    }

    /// Places a library procedure at id `id` (a vacancy, or past the end:
    /// the ids between become vacancies). `sys_*` names are refused.
    pub fn place_library(
        &mut self,
        id: ProcId,
        name: &str,
        origin: Origin,
        func: numaproc_abi::ProcCFn,
    ) -> Result<(), RegisterError> {
        self.place(id, name, origin, ProcKind::Library(func))
    }

    /// Places a procedure that runs only in the SOCs at id `id` (the
    /// master's view of a library procedure), as [`Registry::place_library`].
    pub fn place_external(
        &mut self,
        id: ProcId,
        name: &str,
        origin: Origin,
    ) -> Result<(), RegisterError> {
        self.place(id, name, origin, ProcKind::External)
    }

    fn place(
        &mut self,
        id: ProcId,
        name: &str,
        origin: Origin,
        kind: ProcKind,
    ) -> Result<(), RegisterError> {
        check_name(name)?;
        if name.starts_with("sys_") {
            return Err(RegisterError::Reserved(name.to_owned()));
        }
        if self.by_name.contains_key(name) {
            return Err(RegisterError::Duplicate(name.to_owned()));
        }
        let at = id.0 as usize;
        let taken = self
            .entries
            .get(at)
            .is_some_and(|e| !matches!(e.kind, ProcKind::Vacant))
            || at < self.fixed;
        if taken {
            return Err(RegisterError::IdTaken {
                name: name.to_owned(),
                id: id.0,
            });
        }
        self.reserve_ids(at + 1);
        self.entries[at] = ProcEntry {
            name: name.to_owned(),
            origin,
            kind,
        };
        self.by_name.insert(name.to_owned(), id);
        Ok(())
    }

    /// Leaves `id` vacant for good (its procedure was unloaded): its name
    /// no longer resolves, and may be placed again under another id.
    /// Built-in and registered procedures cannot be withdrawn.
    pub fn withdraw(&mut self, id: ProcId) {
        let at = id.0 as usize;
        if at < self.fixed {
            return;
        }
        if let Some(e) = self.entries.get_mut(at)
            && !matches!(e.kind, ProcKind::Vacant)
        {
            self.by_name.remove(&e.name);
            e.kind = ProcKind::Vacant;
        }
    }

    /// Makes the ids below `n` given (vacancies where no procedure is), so
    /// that [`Registry::next_id`] is at least `n`.
    pub fn reserve_ids(&mut self, n: usize) {
        while self.entries.len() < n {
            self.entries.push(ProcEntry {
                name: String::new(),
                origin: Origin::Builtin,
                kind: ProcKind::Vacant,
            });
        }
    }

    /// The id the next new library procedure gets.
    pub fn next_id(&self) -> ProcId {
        ProcId(self.entries.len() as u32)
    }

    /// The procedures, in id order, vacancies left out.
    pub fn procedures(&self) -> impl Iterator<Item = (ProcId, &ProcEntry)> + '_ {
        self.entries
            .iter()
            .enumerate()
            .filter(|(_, e)| !matches!(e.kind, ProcKind::Vacant))
            .map(|(i, e)| (ProcId(i as u32), e))
    }

    /// Whether any procedure is a Rust function registered by the user
    /// (those cannot reach a SOC started by exec).
    pub fn has_registered(&self) -> bool {
        self.entries.iter().any(|e| e.origin == Origin::Registered)
    }

    fn insert_user(
        &mut self,
        name: &str,
        origin: Origin,
        kind: ProcKind,
    ) -> Result<ProcId, RegisterError> {
        check_name(name)?;
        if name.starts_with("sys_") {
            return Err(RegisterError::Reserved(name.to_owned()));
        }
        self.insert(name, origin, kind)
    }

    fn insert(
        &mut self,
        name: &str,
        origin: Origin,
        kind: ProcKind,
    ) -> Result<ProcId, RegisterError> {
        check_name(name)?;
        if self.by_name.contains_key(name) {
            return Err(RegisterError::Duplicate(name.to_owned()));
        }
        let id = ProcId(u32::try_from(self.entries.len()).map_err(|_| RegisterError::TooMany)?);
        self.entries.push(ProcEntry {
            name: name.to_owned(),
            origin,
            kind,
        });
        self.by_name.insert(name.to_owned(), id);
        Ok(id)
    }

    /// The id of `name`.
    pub fn id(&self, name: &str) -> Option<ProcId> {
        self.by_name.get(name).copied()
    }

    /// The procedure with `id` (`None` for an id vacant or out of range).
    #[inline]
    pub fn get(&self, id: ProcId) -> Option<&ProcEntry> {
        self.entries
            .get(id.0 as usize)
            .filter(|e| !matches!(e.kind, ProcKind::Vacant))
    }

    /// Every entry in id order, vacancies included (see
    /// [`Registry::procedures`]).
    pub fn entries(&self) -> &[ProcEntry] {
        &self.entries
    }

    /// Number of ids given (vacancies included).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none (never: built-ins are always there).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nop(_: &ProcContext<'_>, _: &[u8], _: &mut OutputBuf<'_>) -> Result<(), ProcError> {
        Ok(())
    }

    #[test]
    fn sys_names_are_reserved() {
        let mut r = Registry::new();
        assert_eq!(
            r.register("sys_mine", nop),
            Err(RegisterError::Reserved("sys_mine".into()))
        );
        assert_eq!(
            r.register("sys_ping", nop),
            Err(RegisterError::Reserved("sys_ping".into()))
        );
    }

    #[test]
    fn names_are_checked() {
        let mut r = Registry::new();
        assert!(matches!(
            r.register("", nop),
            Err(RegisterError::Length { len: 0, .. })
        ));
        assert!(matches!(
            r.register(&"a".repeat(64), nop),
            Err(RegisterError::Length { len: 64, .. })
        ));
        assert!(matches!(
            r.register("a b", nop),
            Err(RegisterError::Charset { found: ' ', .. })
        ));
        assert!(matches!(
            r.register("é", nop),
            Err(RegisterError::Charset { found: 'é', .. })
        ));
        let id = r.register(&"a".repeat(63), nop).unwrap();
        assert_eq!(r.get(id).unwrap().origin, Origin::Registered);
        r.register("ns:proc-1.v2", nop).unwrap();
        assert_eq!(
            r.register("ns:proc-1.v2", nop),
            Err(RegisterError::Duplicate("ns:proc-1.v2".into()))
        );
    }

    unsafe extern "C" fn cfn(_: *mut numaproc_abi::Call) -> u32 {
        0
    }

    #[test]
    fn placed_ids_are_never_given_again() {
        let mut r = Registry::new();
        r.register("mine", nop).unwrap();
        let base = r.len() as u32;
        let lib = Origin::Library {
            name: "l".into(),
            version: "1".into(),
        };
        // Past the end: the ids between are vacancies.
        r.place_library(ProcId(base + 2), "l.a", lib.clone(), cfn)
            .unwrap();
        assert_eq!(r.len() as u32, base + 3);
        assert!(r.get(ProcId(base)).is_none());
        assert_eq!(r.id("l.a"), Some(ProcId(base + 2)));
        assert_eq!(
            r.place_library(ProcId(base + 2), "l.b", lib.clone(), cfn),
            Err(RegisterError::IdTaken {
                name: "l.b".into(),
                id: base + 2
            })
        );
        assert!(matches!(
            r.place_external(ProcId(1), "l.b", lib.clone()),
            Err(RegisterError::IdTaken { id: 1, .. })
        ));
        assert_eq!(
            r.place_external(ProcId(base), "l.a", lib.clone()),
            Err(RegisterError::Duplicate("l.a".into()))
        );
        r.withdraw(ProcId(base + 2));
        assert!(r.get(ProcId(base + 2)).is_none());
        assert_eq!(r.id("l.a"), None);
        // The name is free again, under a new id.
        assert_eq!(r.next_id(), ProcId(base + 3));
        r.place_external(r.next_id(), "l.a", lib).unwrap();
        assert_eq!(r.id("l.a"), Some(ProcId(base + 3)));
        // Fixed procedures stay.
        r.withdraw(ProcId(0));
        assert_eq!(r.id("sys_ping"), Some(ProcId(0)));
        assert_eq!(
            r.procedures()
                .map(|(id, _)| id.0)
                .filter(|&i| i >= base)
                .collect::<Vec<_>>(),
            [base + 3]
        );
    }

    #[test]
    fn ids_are_indices() {
        let mut r = Registry::new();
        let n = r.len();
        let id = r.register("mine", nop).unwrap();
        assert_eq!(id, ProcId(n as u32));
        assert_eq!(r.id("mine"), Some(id));
        assert_eq!(r.get(id).unwrap().name, "mine");
        assert_eq!(r.id("sys_ping"), Some(ProcId(0)));
        assert!(r.entries()[..n].iter().all(|e| e.origin == Origin::Builtin));
    }
}
