//! `numaproc serve`: an engine as a named service (see also
//! [`crate::call`] and [`crate::inspect`], a shell's way to use one).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use nix::sys::signal::{SigSet, Signal};
use numaproc::{ClientOptions, Engine, Server, ServerConfig, SocKind};

/// Where a server is: its name and runtime directory.
#[derive(clap::Args)]
pub(crate) struct Where {
    /// The server's name.
    #[arg(long, value_name = "NAME", default_value = "default")]
    pub(crate) name: String,
    /// The servers' runtime directory (default: $XDG_RUNTIME_DIR/numaproc,
    /// or /run/numaproc for root).
    #[arg(long, value_name = "DIR")]
    runtime_dir: Option<PathBuf>,
}

impl Where {
    pub(crate) fn options(&self) -> ClientOptions {
        match &self.runtime_dir {
            Some(d) => ClientOptions::new().dir(d),
            None => ClientOptions::new(),
        }
    }
}

#[derive(clap::Args)]
pub(crate) struct ServeArgs {
    /// Read the engine's and the server's options from a TOML file: every
    /// engine option (as for `numaproc demo --config`), plus `name`,
    /// `runtime_dir`, `state_dir`, `allowed_group`, `strict_catalog` (refuse
    /// to start when a library of the catalog does not load) and
    /// `drain_timeout_ms`.
    /// SOCs are forked unless it sets `soc_kind`.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The server's name (overrides the file's; default "default").
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// The runtime directory of the socket (overrides the file's).
    #[arg(long, value_name = "DIR")]
    runtime_dir: Option<PathBuf>,
    /// Where the server keeps what outlives it (overrides the file's;
    /// default /var/lib/numaproc/NAME for root, else
    /// $XDG_STATE_HOME/numaproc/NAME).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Let members of this group (a name or a gid) attach too (overrides
    /// the file's): the runtime directory becomes theirs to enter, the
    /// socket theirs to connect to. Without it, only this user may attach.
    #[arg(long, value_name = "GROUP")]
    allowed_group: Option<String>,
    /// Start without the libraries of the catalog (the libraries loaded at
    /// run time, kept in the state directory): for a catalog that is
    /// damaged, or whose libraries keep the server from starting. The
    /// catalog is written again at the first library change.
    #[arg(long)]
    skip_catalog: bool,
    /// SOC kind (overrides the file's).
    #[arg(long, value_name = "KIND")]
    kind: Option<SocKind>,
    /// Number of SOCs (overrides the file's).
    #[arg(long, value_name = "N")]
    socs: Option<usize>,
    /// Workers per SOC (overrides the file's).
    #[arg(long, value_name = "N")]
    workers: Option<usize>,
    /// How the log on standard error looks: `text` (one line per event)
    /// or `json` (one object per line, with the event's fields). The
    /// level comes from NUMAPROC_LOG (error, warn, info, debug, off;
    /// default info).
    #[arg(long, value_name = "FORMAT", default_value = "text")]
    log_format: LogFormat,
}

/// `--log-format`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub(crate) enum LogFormat {
    /// One line per event.
    Text,
    /// One JSON object per line.
    Json,
}

/// Sends the engine's events to standard error as `format` says, at the
/// level NUMAPROC_LOG names.
fn init_log(format: LogFormat) -> Result<()> {
    use tracing::level_filters::LevelFilter;
    let level = match std::env::var("NUMAPROC_LOG").as_deref() {
        Ok("error") => LevelFilter::ERROR,
        Ok("warn") => LevelFilter::WARN,
        Ok("debug") => LevelFilter::DEBUG,
        Ok("off") => LevelFilter::OFF,
        Ok("info") | Err(_) => LevelFilter::INFO,
        Ok(other) => anyhow::bail!("NUMAPROC_LOG={other:?}: use error, warn, info, debug or off"),
    };
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .with_target(false);
    let set = match format {
        LogFormat::Text => builder.with_ansi(false).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    set.map_err(|e| anyhow::anyhow!("cannot set up the log: {e}"))
}

/// Signals that stop a server: blocked in every thread, taken by sigwait.
fn stop_signals() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.add(Signal::SIGHUP);
    set
}

pub(crate) fn serve(args: ServeArgs) -> Result<ExitCode> {
    init_log(args.log_format)?;
    let mut config = match &args.config {
        Some(path) => ServerConfig::from_toml_file(path)?,
        None => ServerConfig::default(),
    };
    if let Some(n) = args.name {
        config.server.name = n;
    }
    if let Some(d) = args.runtime_dir {
        config.server.dir = Some(d);
    }
    if let Some(d) = args.state_dir {
        config.server.state_dir = Some(d);
    }
    if let Some(g) = args.allowed_group {
        config.server.allowed_group = Some(g);
    }
    if let Some(k) = args.kind {
        config.engine.soc_kind = k;
    }
    config.server.skip_catalog |= args.skip_catalog;
    if args.socs.is_some() {
        config.engine.socs = args.socs;
    }
    if args.workers.is_some() {
        config.engine.workers_per_soc = args.workers;
    }
    numaproc::server::check_name(&config.server.name)
        .map_err(|e| anyhow::anyhow!("--name: {e}"))?;
    // Blocked before any thread starts, so that every thread inherits the
    // mask and the signals wait for sigwait below (SOCs unblock them).
    let signals = stop_signals();
    signals
        .thread_block()
        .context("blocking the stop signals")?;
    let name = config.server.name.clone();
    let started = Instant::now();
    // The name first: a second server under a live name starts no SOCs.
    let reserved = Server::reserve(&config.server)?;
    let engine = Engine::start(config.engine.clone()).context("starting the engine")?;
    let server = reserved.serve(engine)?;
    let e = server.engine();
    let workers: usize = (0..e.soc_count()).map(|s| e.worker_count(s)).sum();
    let socket = server.socket_path().display().to_string();
    let ready_ms = started.elapsed().as_secs_f64() * 1e3;
    tracing::info!(
        server = %name,
        socket = %socket,
        pid = std::process::id(),
        socs = e.soc_count(),
        soc_kind = %config.engine.soc_kind,
        workers,
        ready_ms,
        "serving {name} at {socket} (pid {}, {} {} SOC(s), {workers} worker(s), ready in {ready_ms:.1} ms)",
        std::process::id(),
        e.soc_count(),
        config.engine.soc_kind,
    );
    notify("READY=1");
    let signal = signals.wait().context("waiting for a stop signal")?;
    notify("STOPPING=1");
    tracing::info!(server = %name, signal = %signal, "{signal}: stopping {name}");
    match server.shutdown() {
        Ok(()) => {
            tracing::info!(server = %name, "{name} stopped");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            tracing::error!(server = %name, error = %e, "{name} stopped: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Tells a service manager how the server is doing (`sd_notify`), when
/// it set `NOTIFY_SOCKET`: a path, or an abstract name after `@`.
fn notify(state: &str) {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let target = target.to_string_lossy().into_owned();
    let sent = (|| -> std::io::Result<()> {
        let addr = match target.strip_prefix('@') {
            Some(abstract_name) => SocketAddr::from_abstract_name(abstract_name)?,
            None => SocketAddr::from_pathname(&target)?,
        };
        let sock = UnixDatagram::unbound()?;
        sock.send_to_addr(state.as_bytes(), &addr)?;
        Ok(())
    })();
    if let Err(e) = sent {
        eprintln!("numaproc: cannot notify {target} of {state}: {e}");
    }
}
