//! Engine options: a builder and a TOML file.

use std::path::Path;
use std::time::Duration;

use numaproc_ipc::{ShmName, WaitPolicy};
use numaproc_procs::{ProcFn, RegisterError, Registry};
use numaproc_soc::SocInitFn;
use serde::{Deserialize, Serialize};

use crate::error::OptionsError;

/// Durations in TOML: whole milliseconds (keys ending in `_ms`) or
/// microseconds (`_us`), saturated at `u64::MAX` (`Duration::MAX` means "as
/// long as possible", not a wrapped-around value); in the options they are
/// `Duration`s, truncated to the unit.
mod units {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn whole_ms(d: Duration) -> Duration {
        Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn whole_us(d: Duration) -> Duration {
        Duration::from_micros(u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
    }

    pub mod ms {
        use super::*;
        pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        }
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
            u64::deserialize(d).map(Duration::from_millis)
        }
    }

    /// `None` is 0 ms.
    pub mod ms_or_none {
        use super::*;
        pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
            ms::serialize(&d.unwrap_or(Duration::ZERO), s)
        }
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            ms::deserialize(d).map(|d| (!d.is_zero()).then_some(d))
        }
    }

    pub mod us {
        use super::*;
        pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_u64(u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        }
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
            u64::deserialize(d).map(Duration::from_micros)
        }
    }
}

/// Default input and output buffer capacity per worker: 64 KiB.
pub const DEFAULT_BUFFER: usize = 64 << 10;
/// Largest input or output buffer per worker: 1 GiB.
pub const MAX_BUFFER: usize = 1 << 30;
/// Most SOCs, and most workers per SOC.
pub const MAX_SOCS: usize = 256;
/// Most workers per SOC.
pub const MAX_WORKERS: usize = 256;

/// How SOCs run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SocKind {
    /// A group of threads inside the master process. Works in any program;
    /// no crash isolation.
    #[default]
    Emulated,
    /// A child process forked from the master at start. Registered Rust
    /// procedures are there through the fork. The master must have no other
    /// threads when it forks (see [`EngineOptions::allow_fork_with_threads`]).
    Forked,
    /// A fresh process started by exec of the SOC executable (by default
    /// the current executable, whose `main` must call
    /// [`crate::soc::run_if_spawned`] first; or `numaproc` itself). Only
    /// built-in and library procedures exist there: registered Rust
    /// functions cannot cross exec and are refused.
    Spawned,
}

impl std::fmt::Display for SocKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Emulated => "emulated",
            Self::Forked => "forked",
            Self::Spawned => "spawned",
        })
    }
}

impl std::str::FromStr for SocKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "emulated" => Ok(Self::Emulated),
            "forked" => Ok(Self::Forked),
            "spawned" => Ok(Self::Spawned),
            other => Err(format!(
                "unknown SOC kind {other:?} (expected \"emulated\", \"forked\" or \"spawned\")"
            )),
        }
    }
}

/// Spin-then-sleep waiting (see `numaproc_ipc::wait`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WaitOptions {
    /// How long an idle worker spins before it sleeps on a futex (TOML:
    /// `worker_spin_us`).
    #[serde(rename = "worker_spin_us", with = "units::us")]
    worker_spin: Duration,
    /// How long a session spins for its result before it sleeps (TOML:
    /// `session_spin_us`).
    #[serde(rename = "session_spin_us", with = "units::us")]
    session_spin: Duration,
    /// Pure spinning before spinning also yields the core (TOML:
    /// `yield_after_us`).
    #[serde(rename = "yield_after_us", with = "units::us")]
    yield_after: Duration,
}

impl Default for WaitOptions {
    fn default() -> Self {
        Self {
            worker_spin: WaitPolicy::WORKER_DEFAULT.spin,
            session_spin: WaitPolicy::SESSION_DEFAULT.spin,
            yield_after: WaitPolicy::WORKER_DEFAULT.yield_after,
        }
    }
}

impl WaitOptions {
    /// How long an idle worker spins before it sleeps on a futex (whole
    /// microseconds; 0: it sleeps at once, and each call wakes it).
    pub fn worker_spin(mut self, d: Duration) -> Self {
        self.worker_spin = units::whole_us(d);
        self
    }

    /// How long a session spins for its result before it sleeps (whole
    /// microseconds).
    pub fn session_spin(mut self, d: Duration) -> Self {
        self.session_spin = units::whole_us(d);
        self
    }

    /// Pure spinning before spinning also yields the core (whole
    /// microseconds).
    pub fn yield_after(mut self, d: Duration) -> Self {
        self.yield_after = units::whole_us(d);
        self
    }

    /// The workers' wait.
    pub fn worker(&self) -> WaitPolicy {
        WaitPolicy {
            spin: self.worker_spin,
            yield_after: self.yield_after,
        }
    }

    /// The sessions' wait.
    pub fn session(&self) -> WaitPolicy {
        WaitPolicy {
            spin: self.session_spin,
            yield_after: self.yield_after,
        }
    }
}

/// Everything [`crate::Engine::start`] needs. Build it with the chained
/// setters, or read it from TOML with [`EngineOptions::from_toml`]; register
/// procedures with [`EngineOptions::register`].
///
/// ```toml
/// socs = 2                  # default: one per NUMA node
/// workers_per_soc = 4       # default: the cores of the SOC's node share
/// soc_kind = "forked"       # or "spawned", or "emulated" (the default)
/// input_capacity = 65536    # bytes per worker
/// output_capacity = 65536
/// name_prefix = "myapp"
/// [wait]
/// worker_spin_us = 200
/// ```
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineOptions {
    /// Number of SOCs; `None`: one per NUMA node.
    pub socs: Option<usize>,
    /// Workers per SOC; `None`: the number of cores the SOC gets.
    pub workers_per_soc: Option<usize>,
    /// How SOCs run.
    pub soc_kind: SocKind,
    /// Input buffer capacity per worker, in bytes.
    pub input_capacity: usize,
    /// Output buffer capacity per worker, in bytes.
    pub output_capacity: usize,
    /// Spinning and sleeping.
    pub wait: WaitOptions,
    /// Prefix of shared-memory object names (`[A-Za-z0-9_]`, 1 to 32 bytes).
    pub name_prefix: String,
    /// How long to wait for every SOC to report ready (TOML:
    /// `startup_timeout_ms`).
    #[serde(rename = "startup_timeout_ms", with = "units::ms")]
    startup_timeout: Duration,
    /// Default wait for an idle worker (TOML: `claim_timeout_ms`).
    #[serde(rename = "claim_timeout_ms", with = "units::ms")]
    claim_timeout: Duration,
    /// Default wait for a call's result; `None`: no limit (TOML:
    /// `call_timeout_ms`, 0 for none).
    #[serde(rename = "call_timeout_ms", with = "units::ms_or_none")]
    call_timeout: Option<Duration>,
    /// How long shutdown waits for running calls and SOC exits (TOML:
    /// `shutdown_timeout_ms`).
    #[serde(rename = "shutdown_timeout_ms", with = "units::ms")]
    shutdown_timeout: Duration,
    /// Plan against this hwloc synthetic topology (e.g. "node:4 core:4
    /// pu:1") instead of the machine; workers are then not bound.
    pub synthetic_topology: Option<String>,
    /// The directory procedure libraries are loaded from; nothing outside
    /// it is loaded.
    pub library_dir: Option<std::path::PathBuf>,
    /// Procedure libraries each SOC loads: file names or relative paths
    /// inside `library_dir`; a bare name `x` means `libx.so`; `{soc}` is
    /// replaced by the SOC index. With `{soc}`, every SOC's libraries must
    /// export the same procedures.
    pub libraries: Vec<String>,
    /// The executable spawned SOCs run (default: the current executable).
    pub soc_executable: Option<std::path::PathBuf>,
    /// Restarting SOCs that die (forked and spawned).
    pub restart: crate::RestartPolicy,
    /// Hard limit on one call (`None`: none). A call running longer gets
    /// its SOC killed and restarted, even if its procedure never checks
    /// `is_cancelled`; its session gets `CallError::Killed`. Forked and
    /// spawned SOCs only (TOML: `hard_limit_ms`, 0 for none).
    #[serde(rename = "hard_limit_ms", with = "units::ms_or_none")]
    hard_limit: Option<Duration>,
    /// Fork SOCs even when the master has other threads. Only the forking
    /// thread survives in the child; a lock held by another thread at that
    /// moment (in the allocator, stdio, or the program's own code) stays
    /// locked there forever. Also, the zygote that forks the SOCs dies with
    /// the thread that started the engine (its parent-death signal follows
    /// that thread): a thread that ends while its engine lives takes the
    /// engine's forked SOCs with it. Off by default: start the engine
    /// before other threads, or use emulated SOCs.
    pub allow_fork_with_threads: bool,
    #[serde(skip)]
    pub(crate) registry: Registry,
    #[serde(skip)]
    pub(crate) soc_init: Option<SocInitFn>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            socs: None,
            workers_per_soc: None,
            soc_kind: SocKind::default(),
            input_capacity: DEFAULT_BUFFER,
            output_capacity: DEFAULT_BUFFER,
            wait: WaitOptions::default(),
            name_prefix: "default".to_owned(),
            startup_timeout: Duration::from_secs(10),
            claim_timeout: Duration::from_secs(10),
            call_timeout: Some(Duration::from_secs(60)),
            shutdown_timeout: Duration::from_secs(5),
            synthetic_topology: None,
            library_dir: None,
            libraries: Vec::new(),
            soc_executable: None,
            restart: crate::RestartPolicy::default(),
            hard_limit: None,
            allow_fork_with_threads: false,
            registry: Registry::new(),
            soc_init: None,
        }
    }
}

impl std::fmt::Debug for EngineOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineOptions")
            .field("socs", &self.socs)
            .field("workers_per_soc", &self.workers_per_soc)
            .field("soc_kind", &self.soc_kind)
            .field("input_capacity", &self.input_capacity)
            .field("output_capacity", &self.output_capacity)
            .field("wait", &self.wait)
            .field("name_prefix", &self.name_prefix)
            .field("library_dir", &self.library_dir)
            .field("libraries", &self.libraries)
            .field("procedures", &self.registry.len())
            .finish_non_exhaustive()
    }
}

/// The engine's time limits as durations (see [`EngineOptions::timeouts`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// How long the SOCs may take to report ready.
    pub startup: Duration,
    /// How long a call waits for an idle worker by default.
    pub claim: Duration,
    /// How long a call waits for its result by default (`None`: no limit).
    pub call: Option<Duration>,
    /// How long a shutdown waits for running calls and SOCs.
    pub shutdown: Duration,
    /// The hard limit on one call (`None`: none).
    pub hard_limit: Option<Duration>,
}

impl EngineOptions {
    /// The time limits, as durations.
    pub fn timeouts(&self) -> Timeouts {
        Timeouts {
            startup: self.startup_timeout,
            claim: self.claim_timeout,
            call: self.call_timeout,
            shutdown: self.shutdown_timeout,
            hard_limit: self.hard_limit,
        }
    }

    /// The defaults: one SOC per node, one worker per core, emulated SOCs,
    /// 64 KiB buffers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses TOML (unknown keys are errors).
    pub fn from_toml(text: &str) -> Result<Self, OptionsError> {
        toml::from_str(text).map_err(|e| OptionsError::Toml(e.to_string()))
    }

    /// Reads a TOML file.
    pub fn from_toml_file(path: impl AsRef<Path>) -> Result<Self, OptionsError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|e| OptionsError::Toml(format!("{}: {e}", path.display())))?;
        Self::from_toml(&text).map_err(|e| OptionsError::Toml(format!("{}: {e}", path.display())))
    }

    /// The options as TOML (without registered procedures).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot serialise options: {e}\n"))
    }

    /// Sets the number of SOCs.
    pub fn socs(mut self, n: usize) -> Self {
        self.socs = Some(n);
        self
    }

    /// Sets the workers per SOC.
    pub fn workers_per_soc(mut self, n: usize) -> Self {
        self.workers_per_soc = Some(n);
        self
    }

    /// Sets the SOC kind.
    pub fn soc_kind(mut self, kind: SocKind) -> Self {
        self.soc_kind = kind;
        self
    }

    /// Sets the input buffer capacity per worker.
    pub fn input_capacity(mut self, bytes: usize) -> Self {
        self.input_capacity = bytes;
        self
    }

    /// Sets the output buffer capacity per worker.
    pub fn output_capacity(mut self, bytes: usize) -> Self {
        self.output_capacity = bytes;
        self
    }

    /// Sets the wait policy.
    pub fn wait(mut self, wait: WaitOptions) -> Self {
        self.wait = wait;
        self
    }

    /// Sets the shared-object name prefix.
    pub fn name_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.name_prefix = prefix.into();
        self
    }

    /// Sets the start-up timeout.
    pub fn startup_timeout(mut self, d: Duration) -> Self {
        self.startup_timeout = units::whole_ms(d);
        self
    }

    /// Sets the default wait for an idle worker.
    pub fn claim_timeout(mut self, d: Duration) -> Self {
        self.claim_timeout = units::whole_ms(d);
        self
    }

    /// Sets the default wait for a result (`Duration::ZERO`: no limit).
    pub fn call_timeout(mut self, d: Duration) -> Self {
        self.call_timeout = Some(units::whole_ms(d)).filter(|d| !d.is_zero());
        self
    }

    /// Sets the shutdown timeout.
    pub fn shutdown_timeout(mut self, d: Duration) -> Self {
        self.shutdown_timeout = units::whole_ms(d);
        self
    }

    /// Plans against a synthetic hwloc topology (workers are not bound).
    pub fn synthetic_topology(mut self, description: impl Into<String>) -> Self {
        self.synthetic_topology = Some(description.into());
        self
    }

    /// Sets the directory procedure libraries are loaded from.
    pub fn library_dir(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.library_dir = Some(dir.into());
        self
    }

    /// Adds a procedure library every SOC loads (see the field).
    pub fn library(mut self, entry: impl Into<String>) -> Self {
        self.libraries.push(entry.into());
        self
    }

    /// Sets the restart policy.
    pub fn restart(mut self, policy: crate::RestartPolicy) -> Self {
        self.restart = policy;
        self
    }

    /// Sets the hard limit on one call (`Duration::ZERO`: none).
    pub fn hard_limit(mut self, d: Duration) -> Self {
        self.hard_limit = Some(units::whole_ms(d)).filter(|d| !d.is_zero());
        self
    }

    /// Sets the executable spawned SOCs run.
    pub fn soc_executable(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.soc_executable = Some(path.into());
        self
    }

    /// Allows forking SOCs while the master has other threads (see the field).
    pub fn allow_fork_with_threads(mut self, yes: bool) -> Self {
        self.allow_fork_with_threads = yes;
        self
    }

    /// Registers a procedure under `name` (1 to 63 bytes of
    /// `[A-Za-z0-9_.:-]`, unique, not starting with `sys_`).
    pub fn register(mut self, name: &str, func: ProcFn) -> Result<Self, RegisterError> {
        self.registry.register(name, func)?;
        Ok(self)
    }

    /// Sets a hook run in every SOC before its workers start.
    pub fn on_soc_start(mut self, hook: SocInitFn) -> Self {
        self.soc_init = Some(hook);
        self
    }

    /// The procedures registered so far (built-ins first).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Checks every option; the error names the option.
    pub fn validate(&self) -> Result<(), OptionsError> {
        let bad =
            |option: &'static str, reason: String| Err(OptionsError::Invalid { option, reason });
        if let Some(n) = self.socs
            && !(1..=MAX_SOCS).contains(&n)
        {
            return bad("socs", format!("must be 1 to {MAX_SOCS}, got {n}"));
        }
        if let Some(n) = self.workers_per_soc
            && !(1..=MAX_WORKERS).contains(&n)
        {
            return bad(
                "workers_per_soc",
                format!("must be 1 to {MAX_WORKERS}, got {n}"),
            );
        }
        for (option, v) in [
            ("input_capacity", self.input_capacity),
            ("output_capacity", self.output_capacity),
        ] {
            if !(1..=MAX_BUFFER).contains(&v) {
                return bad(
                    option,
                    format!("must be 1 byte to {MAX_BUFFER} bytes (1 GiB), got {v}"),
                );
            }
        }
        if let Err(e) = ShmName::check_prefix(&self.name_prefix) {
            return bad("name_prefix", e.to_string());
        }
        let second = Duration::from_secs(1);
        for (option, v) in [
            ("wait.worker_spin_us", self.wait.worker_spin),
            ("wait.session_spin_us", self.wait.session_spin),
            ("wait.yield_after_us", self.wait.yield_after),
        ] {
            if v > second {
                return bad(
                    option,
                    format!("must be at most 1 s (1000000 µs), got {}", v.as_micros()),
                );
            }
        }
        for (option, v) in [
            ("startup_timeout_ms", self.startup_timeout),
            ("claim_timeout_ms", self.claim_timeout),
            ("shutdown_timeout_ms", self.shutdown_timeout),
        ] {
            if v.is_zero() {
                return bad(option, "must be at least 1 ms".to_owned());
            }
        }
        if let Some(s) = &self.synthetic_topology
            && s.trim().is_empty()
        {
            return bad("synthetic_topology", "is empty".to_owned());
        }
        if self.hard_limit.is_some() && self.soc_kind == SocKind::Emulated {
            return bad(
                "hard_limit_ms",
                "needs forked or spawned SOCs: the threads of an emulated SOC cannot be killed"
                    .to_owned(),
            );
        }
        if !self.libraries.is_empty() && self.library_dir.is_none() {
            return bad(
                "library_dir",
                "must be set when libraries are listed".to_owned(),
            );
        }
        if let Some(dir) = &self.library_dir
            && dir
                .to_str()
                .is_none_or(|d| d.is_empty() || d.contains('\n'))
        {
            return bad(
                "library_dir",
                format!("{} is not a usable path", dir.display()),
            );
        }
        for entry in &self.libraries {
            if entry.is_empty() || entry.contains('\n') || entry.contains('\0') {
                return bad(
                    "libraries",
                    format!("{entry:?} is not a usable library name"),
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_round_trip_and_unknown_keys() {
        let o = EngineOptions::from_toml(
            "socs = 2\nsoc_kind = \"forked\"\ninput_capacity = 1024\n[wait]\nworker_spin_us = 5\n",
        )
        .unwrap();
        assert_eq!(o.socs, Some(2));
        assert_eq!(o.soc_kind, SocKind::Forked);
        assert_eq!(o.input_capacity, 1024);
        assert_eq!(o.output_capacity, DEFAULT_BUFFER);
        assert_eq!(o.wait.worker().spin, Duration::from_micros(5));
        let back = EngineOptions::from_toml(&o.to_toml()).unwrap();
        assert_eq!(back.to_toml(), o.to_toml());
        let e = EngineOptions::from_toml("sockets = 2").unwrap_err();
        assert!(e.to_string().contains("sockets"), "{e}");
        let e = EngineOptions::from_toml("soc_kind = \"spawnd\"").unwrap_err();
        assert!(e.to_string().contains("spawnd"), "{e}");
    }

    /// Every key of the file, each set away from its default, read from a
    /// file: a key the file format lost, renamed or ignored fails here.
    #[test]
    fn a_file_with_every_key_sets_every_option() {
        let text = r#"
socs = 3
workers_per_soc = 5
soc_kind = "spawned"
input_capacity = 4096
output_capacity = 8192
name_prefix = "everykey"
startup_timeout_ms = 1234
claim_timeout_ms = 2345
call_timeout_ms = 3456
shutdown_timeout_ms = 4567
synthetic_topology = "node:2 core:2 pu:1"
library_dir = "/opt/procs"
libraries = ["liba.so", "b"]
soc_executable = "/usr/local/bin/numaproc"
hard_limit_ms = 5678
allow_fork_with_threads = true

[wait]
worker_spin_us = 11
session_spin_us = 12
yield_after_us = 13

[restart]
max_restarts = 7
window_ms = 8000
backoff_ms = 90
max_backoff_ms = 900
"#;
        let dir = std::env::temp_dir().join(format!("numaproc-options-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("every.toml");
        std::fs::write(&path, text).unwrap();
        let o = EngineOptions::from_toml_file(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(o.socs, Some(3));
        assert_eq!(o.workers_per_soc, Some(5));
        assert_eq!(o.soc_kind, SocKind::Spawned);
        assert_eq!((o.input_capacity, o.output_capacity), (4096, 8192));
        assert_eq!(o.name_prefix, "everykey");
        let t = o.timeouts();
        assert_eq!(t.startup, Duration::from_millis(1234));
        assert_eq!(t.claim, Duration::from_millis(2345));
        assert_eq!(t.call, Some(Duration::from_millis(3456)));
        assert_eq!(t.shutdown, Duration::from_millis(4567));
        assert_eq!(t.hard_limit, Some(Duration::from_millis(5678)));
        assert_eq!(o.synthetic_topology.as_deref(), Some("node:2 core:2 pu:1"));
        assert_eq!(
            o.library_dir.as_deref(),
            Some(std::path::Path::new("/opt/procs"))
        );
        assert_eq!(o.libraries, ["liba.so", "b"]);
        assert_eq!(
            o.soc_executable.as_deref(),
            Some(std::path::Path::new("/usr/local/bin/numaproc"))
        );
        assert!(o.allow_fork_with_threads);
        assert_eq!(o.wait.worker().spin, Duration::from_micros(11));
        assert_eq!(o.wait.session().spin, Duration::from_micros(12));
        assert_eq!(o.wait.worker().yield_after, Duration::from_micros(13));
        assert_eq!(o.restart.max_restarts, 7);
        assert_eq!(o.restart.window_ms, 8000);
        assert_eq!(o.restart.backoff_ms, 90);
        assert_eq!(o.restart.max_backoff_ms, 900);
        // Written back, it reads the same; a file that is not there is
        // named in the error.
        assert_eq!(
            EngineOptions::from_toml(&o.to_toml()).unwrap().to_toml(),
            o.to_toml()
        );
        let e = EngineOptions::from_toml_file(dir.join("missing.toml")).unwrap_err();
        assert!(e.to_string().contains("missing.toml"), "{e}");
    }

    #[test]
    fn times_are_durations_and_toml_keeps_its_units() {
        let o = EngineOptions::from_toml(
            "startup_timeout_ms = 1500\ncall_timeout_ms = 0\nhard_limit_ms = 250\n[wait]\nsession_spin_us = 7\n",
        )
        .unwrap();
        let t = o.timeouts();
        assert_eq!(t.startup, Duration::from_millis(1500));
        assert_eq!(t.call, None);
        assert_eq!(t.hard_limit, Some(Duration::from_millis(250)));
        assert_eq!(t.claim, Duration::from_secs(10));
        assert_eq!(o.wait.session().spin, Duration::from_micros(7));
        let text = o.to_toml();
        for line in [
            "startup_timeout_ms = 1500",
            "call_timeout_ms = 0",
            "hard_limit_ms = 250",
            "session_spin_us = 7",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
        // Setters keep whole units; zero means none where none exists.
        let o = EngineOptions::new()
            .call_timeout(Duration::ZERO)
            .hard_limit(Duration::from_micros(2500))
            .claim_timeout(Duration::MAX);
        let t = o.timeouts();
        assert_eq!(t.call, None);
        assert_eq!(t.hard_limit, Some(Duration::from_millis(2)));
        assert_eq!(t.claim, Duration::from_millis(u64::MAX));
    }

    #[test]
    fn invalid_options_are_named() {
        let cases: [(EngineOptions, &str); 7] = [
            (EngineOptions::new().socs(0), "socs"),
            (EngineOptions::new().workers_per_soc(257), "workers_per_soc"),
            (EngineOptions::new().input_capacity(0), "input_capacity"),
            (
                EngineOptions::new().output_capacity(MAX_BUFFER + 1),
                "output_capacity",
            ),
            (EngineOptions::new().name_prefix("a-b"), "name_prefix"),
            (
                EngineOptions::new().startup_timeout(Duration::ZERO),
                "startup_timeout_ms",
            ),
            (
                EngineOptions::new()
                    .wait(WaitOptions::default().worker_spin(Duration::from_secs(2))),
                "wait.worker_spin_us",
            ),
        ];
        for (o, name) in cases {
            match o.validate() {
                Err(OptionsError::Invalid { option, .. }) => assert_eq!(option, name),
                other => panic!("{name}: {other:?}"),
            }
        }
        assert!(
            EngineOptions::new()
                .input_capacity(64 << 20)
                .validate()
                .is_ok()
        );
    }
}
