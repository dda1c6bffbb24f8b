//! Where a server can be found: its runtime directory, the socket clients
//! connect to, and the lock that tells a live server from a dead one.
//!
//! The directory is `$XDG_RUNTIME_DIR/numaproc/` (or `/run/numaproc/` for
//! root, `/tmp/numaproc-<uid>/` when neither exists), created mode 0700 and
//! refused when another user owns it or others may write it: whoever can
//! write it could put a socket of their own under a server's name. A
//! server holds an exclusive `flock` on `<name>.lock` (which holds its pid)
//! for its whole life; the kernel drops the lock when it dies, so a name
//! whose lock can be taken has no live server, and its socket is stale.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

/// Longest server name.
pub const MAX_NAME: usize = 64;

/// The runtime directory of this user's servers (see the module docs).
pub fn default_dir() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/run/numaproc");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d).join("numaproc"),
        _ => PathBuf::from(format!("/tmp/numaproc-{}", nix::unistd::geteuid())),
    }
}

/// The default state directory of server `name`: `/var/lib/numaproc/NAME`
/// for root, else `$XDG_STATE_HOME/numaproc/NAME` (or
/// `~/.local/state/numaproc/NAME`).
pub fn default_state_dir(name: &str) -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/lib/numaproc").join(name);
    }
    let base = match std::env::var_os("XDG_STATE_HOME") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => match std::env::var_os("HOME") {
            Some(h) if !h.is_empty() => PathBuf::from(h).join(".local/state"),
            _ => PathBuf::from(format!("/tmp/numaproc-state-{}", nix::unistd::geteuid())),
        },
    };
    base.join("numaproc").join(name)
}

/// Checks a state directory that exists: a directory of this user that no
/// one else may write (what a server reads back from it at its next start
/// must be its own). One that does not exist yet is made when first
/// written.
pub fn check_state_dir(dir: &Path) -> Result<(), String> {
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("state directory {}: {e}", dir.display())),
        Ok(_) => check_owned(dir).map_err(|e| format!("state directory {e}")),
    }
}

/// Checks a server name: 1 to 64 of `[A-Za-z0-9_-]`.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(format!(
            "a server name is 1 to {MAX_NAME} bytes long, {name:?} is {}",
            name.len()
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(format!(
            "a server name may only hold ASCII letters, digits, '_' and '-': {name:?}"
        ));
    }
    Ok(())
}

/// The paths of server `name` in `dir`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    /// The socket clients connect to.
    pub socket: PathBuf,
    /// The lock a live server holds.
    pub lock: PathBuf,
}

impl Paths {
    /// The paths of server `name` in `dir`.
    pub fn new(dir: &Path, name: &str) -> Self {
        Self {
            socket: dir.join(format!("{name}.sock")),
            lock: dir.join(format!("{name}.lock")),
        }
    }
}

/// The gid of `group`: a group name, or a numeric gid of an existing
/// group.
pub fn resolve_group(group: &str) -> Result<u32, String> {
    let found = match group.parse::<u32>() {
        Ok(gid) => nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid)),
        Err(_) => nix::unistd::Group::from_name(group),
    };
    match found {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        Ok(None) => Err(format!("allowed_group {group:?}: no such group")),
        Err(e) => Err(format!("allowed_group {group:?}: {e}")),
    }
}

/// Creates `dir` (mode 0700) if it is missing, and checks that this user
/// owns it and that no one else may write it. With `group`, the directory
/// becomes that group's to enter (mode 0710); a directory another group
/// may already enter is refused (give each group's servers their own).
pub fn prepare(dir: &Path, group: Option<u32>) -> Result<(), String> {
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("cannot create {}: {e}", dir.display())),
    }
    check_owned(dir)?;
    let Some(gid) = group else {
        return Ok(());
    };
    let meta = std::fs::symlink_metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o070 != 0 && meta.gid() != gid {
        return Err(format!(
            "{} may already be entered by group {} (mode {mode:o}); a server for group {gid} needs a runtime directory of its own",
            dir.display(),
            meta.gid()
        ));
    }
    std::os::unix::fs::chown(dir, None, Some(gid))
        .map_err(|e| format!("cannot give {} to group {gid}: {e}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode | 0o010))
        .map_err(|e| format!("cannot let group {gid} enter {}: {e}", dir.display()))
}

/// A server's check of its runtime directory: this user owns it and no
/// one else may write it.
fn check_owned(dir: &Path) -> Result<(), String> {
    check_dir(dir)?;
    let meta = std::fs::symlink_metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(format!(
            "{} belongs to uid {}, not to this user (uid {me}): another user could put a socket there under a server's name",
            dir.display(),
            meta.uid()
        ));
    }
    Ok(())
}

/// A client's (and a server's) check of a runtime directory: no one but
/// its owner may write it, so no other user can put a socket there under
/// a server's name. Its owner may be another user: a server that lets a
/// group in owns its directory, and a client trusts the server whose
/// directory it names.
pub fn check_dir(dir: &Path) -> Result<(), String> {
    let meta = std::fs::symlink_metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if !meta.is_dir() {
        return Err(format!("{} is not a directory", dir.display()));
    }
    if meta.permissions().mode() & 0o022 != 0 {
        return Err(format!(
            "{} may be written by group or others (mode {:o}): they could put a socket there under a server's name",
            dir.display(),
            meta.permissions().mode() & 0o7777
        ));
    }
    Ok(())
}

/// A server's hold on its name: the locked lock file, holding its pid.
#[derive(Debug)]
pub struct NameLock {
    _lock: Flock<File>,
    paths: Paths,
}

impl Drop for NameLock {
    /// Removes the socket and the lock file, then gives the name up (in
    /// that order: while the lock is held, no other server takes the name
    /// and then loses its socket to this one).
    fn drop(&mut self) {
        use std::os::unix::fs::MetadataExt;
        // Only while the lock file is still ours: one removed by hand and
        // made again is another server's, and so is the socket then.
        let ours = match (
            self._lock.metadata(),
            std::fs::symlink_metadata(&self.paths.lock),
        ) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        };
        if ours {
            let _ = std::fs::remove_file(&self.paths.socket);
            let _ = std::fs::remove_file(&self.paths.lock);
        }
    }
}

/// Why a name could not be taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TakeError {
    /// A live server holds it (its pid, when it wrote one).
    Held(Option<u32>),
    /// The lock file could not be used.
    Io(String),
}

impl NameLock {
    /// Takes the name of `paths` (its lock file), or says which live
    /// server holds it. Dropped, it removes the socket and the lock file.
    pub fn take(paths: &Paths) -> Result<Self, TakeError> {
        let path = paths.lock.as_path();
        // A stopping server removes its lock file before it unlocks it: a
        // lock taken on the removed file is no lock on the name, so look
        // again (a few times: each retry means a server stopped meanwhile).
        for _ in 0..8 {
            if let Some(lock) = Self::take_once(path)? {
                return Ok(Self {
                    _lock: lock,
                    paths: paths.clone(),
                });
            }
        }
        Err(TakeError::Io(format!(
            "{}: replaced again and again while being locked",
            path.display()
        )))
    }

    /// One attempt: `None` when the file locked is no longer the one at
    /// `path`.
    fn take_once(path: &Path) -> Result<Option<Flock<File>>, TakeError> {
        use std::os::unix::fs::MetadataExt;
        let io = |e: std::io::Error| TakeError::Io(format!("{}: {e}", path.display()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(nix::libc::O_CLOEXEC | nix::libc::O_NOFOLLOW)
            .open(path)
            .map_err(io)?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => l,
            Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                return Err(TakeError::Held(text.trim().parse().ok()));
            }
            Err((_, e)) => return Err(TakeError::Io(format!("{}: {e}", path.display()))),
        };
        let locked = lock.metadata().map_err(io)?;
        match std::fs::symlink_metadata(path) {
            Ok(now) if now.dev() == locked.dev() && now.ino() == locked.ino() => {}
            Ok(_) => return Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(e)),
        }
        lock.set_len(0).map_err(io)?;
        lock.rewind().map_err(io)?;
        write!(lock, "{}", std::process::id()).map_err(io)?;
        Ok(Some(lock))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(check_name("default").is_ok());
        assert!(check_name("a-b_9").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("a/b").is_err());
        assert!(check_name("..").is_err());
        assert!(check_name(&"x".repeat(MAX_NAME + 1)).is_err());
    }

    #[test]
    fn a_held_name_names_its_holder() {
        let dir = std::env::temp_dir().join(format!("numaproc-dir-{}", std::process::id()));
        prepare(&dir, None).unwrap();
        let paths = Paths::new(&dir, "held");
        let held = NameLock::take(&paths).unwrap();
        assert_eq!(
            NameLock::take(&paths).unwrap_err(),
            TakeError::Held(Some(std::process::id()))
        );
        drop(held);
        assert!(!paths.lock.exists(), "a name given up leaves no lock file");
        let again = NameLock::take(&paths).expect("free once its holder is gone");
        // A lock file replaced under its holder (removed by a server that
        // stopped, made again by another) is no longer its lock.
        std::fs::remove_file(&paths.lock).unwrap();
        let other = NameLock::take(&paths).expect("a new lock file is a new lock");
        drop(again);
        assert_eq!(
            NameLock::take(&paths).unwrap_err(),
            TakeError::Held(Some(std::process::id()))
        );
        drop(other);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_state_directory_is_checked_when_it_exists() {
        let root = std::env::temp_dir().join(format!("numaproc-state-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let missing = root.join("missing");
        assert_eq!(check_state_dir(&missing), Ok(()), "made when first written");
        assert!(!missing.exists(), "a check makes nothing");
        let open = root.join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = check_state_dir(&open).unwrap_err();
        assert!(
            e.starts_with("state directory ") && e.contains("group or others"),
            "{e}"
        );
        let file = root.join("file");
        std::fs::write(&file, b"").unwrap();
        let e = check_state_dir(&file).unwrap_err();
        assert!(e.contains("is not a directory"), "{e}");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert_eq!(check_state_dir(&open), Ok(()));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_directory_others_may_write_is_refused() {
        let dir = std::env::temp_dir().join(format!("numaproc-dir-w-{}", std::process::id()));
        prepare(&dir, None).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = prepare(&dir, None).unwrap_err();
        assert!(e.contains("group or others"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
