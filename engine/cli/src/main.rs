//! The `numaproc` command: a demo of the engine and a look at the plan.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use numaproc::{Plan, Topology};
use serde::Serialize;

mod call;
mod demo;
mod floor;
mod inspect;
mod libraries;
mod libs;
mod serve;

#[derive(Parser)]
#[command(
    name = "numaproc",
    version,
    about = "A multi-process procedure execution engine for NUMA machines",
    long_about = "A multi-process procedure execution engine for NUMA machines.\n\n\
        A master starts one SOC per NUMA node (threads of the master, forked processes, or \
        spawned processes of a SOC executable), each with worker \
        threads pinned to the cores of its node; callers hand a worker a procedure name and a \
        byte buffer through shared memory and get the output back."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start an engine, call built-in and user procedures on every worker,
    /// and print the SOCs, their workers and cores, and sys_ping latency.
    Demo(demo::DemoArgs),
    /// Print the machine's NUMA topology and the plan of SOCs and workers.
    Topology(TopologyArgs),
    /// Remove the shared-memory objects of dead masters: numaproc-* objects
    /// in /dev/shm of this user whose lock no process holds (a master holds
    /// the lock of each of its objects while it lives). Objects of live
    /// masters, of other users and of other numaproc versions are kept.
    Cleanup(CleanupArgs),
    /// Run an engine as a named server until SIGTERM or SIGINT: other
    /// processes of this user call its procedures (`numaproc call`,
    /// numaproc::Client). On a stop signal it takes no new call, lets
    /// calls in flight end (up to drain_timeout_ms), stops its SOCs and
    /// removes everything it created. Tells systemd when it is ready
    /// (Type=notify) if NOTIFY_SOCKET is set.
    Serve(serve::ServeArgs),
    /// Call a procedure of a running server and write its output to
    /// standard output (with --json: a JSON object; with --repeat N: the
    /// latencies of N calls).
    ///
    /// The input is INPUT, --input or --input-file; without them, standard
    /// input when it is not a terminal, else nothing.
    ///
    /// Exit status: 0 the call succeeded (every call, with --repeat); 1
    /// the procedure failed (or does not exist, or its input or output
    /// does not fit, or the target SOC or worker does not exist); 2 bad
    /// arguments; 3 no server could be reached (none runs under the name,
    /// it refused this process, or it speaks another version); 4 no idle
    /// worker or no result within --timeout; 5 the engine could not run
    /// the call (its SOC died, it stopped). With --repeat, the status of
    /// the first failed call.
    Call(call::CallArgs),
    /// Print what a running server says of itself: its pid, uptime and SOC
    /// kind; each SOC's pid, state, restarts, workers and their CPUs; the
    /// libraries and their versions; each procedure's calls, errors, p50
    /// and p99 (from each SOC's sys_stats: calls and errors summed over
    /// the SOCs, p50 and p99 the largest of theirs); the clients attached.
    ///
    /// A SOC that cannot answer (dead, restarting, all its workers busy
    /// past --timeout) is shown as such; its calls are not counted.
    ///
    /// Exit status: 0 the server answered; 2 bad arguments; 3 no server
    /// could be reached (none runs under the name, it refused this
    /// process, or it speaks another version).
    Status(inspect::StatusArgs),
    /// List the procedures of a running server, in id order, and where
    /// each comes from: built-in, registered, or a library (its name and
    /// version).
    ///
    /// Exit status: 0 listed; 2 bad arguments; 3 no server could be
    /// reached (none runs under the name, it refused this process, or it
    /// speaks another version).
    List(inspect::ListArgs),
    /// Load, unload, upgrade and list the procedure libraries of a running
    /// server while it serves (load, unload and upgrade: the server's own
    /// user only). See `numaproc libs <COMMAND> --help`.
    Libs(libraries::LibsArgs),
    /// Serve as a spawned SOC. An engine runs this executable with its
    /// NUMAPROC_SOC_* environment when `soc_executable` names it (or when it
    /// is the engine's own executable); it is not meant to be run by hand.
    Soc,
}

#[derive(clap::Args)]
struct CleanupArgs {
    /// Only objects with this name prefix (option name_prefix).
    #[arg(long, value_name = "PREFIX")]
    prefix: Option<String>,
    /// List what would be removed, remove nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct TopologyArgs {
    /// Plan this many SOCs (default: one per NUMA node).
    #[arg(long, value_name = "N")]
    socs: Option<usize>,
    /// Plan this many workers per SOC (default: one per core).
    #[arg(long, value_name = "N")]
    workers: Option<usize>,
    /// Plan against an hwloc synthetic topology, e.g. "node:4 core:4 pu:1"
    /// (the HWLOC_SYNTHETIC environment variable works too).
    #[arg(long, value_name = "DESC")]
    synthetic: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    // When the engine spawns this executable as a SOC, serve and exit.
    numaproc::soc::run_if_spawned();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => demo::run(args),
        Command::Topology(args) => topology(args),
        Command::Cleanup(args) => cleanup(args),
        Command::Serve(args) => serve::serve(args),
        Command::Call(args) => call::call(args),
        Command::Status(args) => inspect::status(args),
        Command::List(args) => inspect::list(args),
        Command::Libs(args) => libraries::libs(args),
        // A real spawned SOC never gets here: run_if_spawned served and exited.
        Command::Soc => Err(anyhow::anyhow!(
            "`numaproc soc` is started by an engine with NUMAPROC_SOC_ENGINE set (option soc_executable); it is not run by hand"
        )),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("numaproc: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn topology(args: TopologyArgs) -> Result<ExitCode> {
    let topo = match &args.synthetic {
        Some(d) => Topology::synthetic(d),
        None => Topology::detect(),
    }
    .context("reading the topology")?;
    let plan = numaproc::plan(
        &topo,
        &numaproc::PlanRequest {
            socs: args.socs,
            workers_per_soc: args.workers,
        },
    )
    .context("planning")?;
    if args.json {
        #[derive(Serialize)]
        struct Out<'a> {
            topology: &'a Topology,
            plan: &'a Plan,
        }
        println!(
            "{}",
            serde_json::to_string_pretty(&Out {
                topology: &topo,
                plan: &plan
            })?
        );
    } else {
        print!("{}", plan.to_table());
    }
    Ok(ExitCode::SUCCESS)
}

fn cleanup(args: CleanupArgs) -> Result<ExitCode> {
    use numaproc::stale::Verdict;
    #[derive(Serialize)]
    struct Object {
        name: String,
        /// live, dead, not_ours or unknown.
        master: &'static str,
        /// Why the master's state is unknown, or whose object it is.
        detail: Option<String>,
        /// The creating process, from the object's header.
        master_pid: Option<u32>,
        master_start_ticks: Option<u64>,
        master_this_boot: Option<bool>,
        removed: bool,
        /// Why a dead master's object could not be removed.
        error: Option<String>,
    }
    if let Some(p) = &args.prefix {
        numaproc::ShmName::check_prefix(p)?;
    }
    let prefix = args.prefix.as_deref();
    let cleanup = if args.dry_run {
        numaproc::stale::Cleanup {
            found: numaproc::stale::scan(prefix).context("reading /dev/shm")?,
            ..Default::default()
        }
    } else {
        numaproc::stale::remove_stale(prefix).context("removing stale objects")?
    };
    let objects: Vec<Object> = cleanup
        .found
        .iter()
        .map(|f| {
            let (master, detail) = match &f.verdict {
                Verdict::Live => ("live", None),
                Verdict::Dead => ("dead", None),
                Verdict::NotOurs { uid } => ("not_ours", Some(format!("owned by uid {uid}"))),
                Verdict::Unknown(why) => ("unknown", Some(why.clone())),
            };
            Object {
                name: f.name.to_string(),
                master,
                detail,
                master_pid: f.creator.map(|c| c.pid),
                master_start_ticks: f.creator.map(|c| c.start_ticks),
                master_this_boot: f.creator.map(|c| c.this_boot()),
                removed: cleanup.removed.contains(&f.name),
                error: cleanup
                    .failed
                    .iter()
                    .find(|(n, _)| *n == f.name)
                    .map(|(_, e)| e.clone()),
            }
        })
        .collect();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&objects)?);
    } else {
        if objects.is_empty() {
            println!("no numaproc shared-memory objects");
        }
        for o in &objects {
            let what = match (o.master, o.removed, &o.error, args.dry_run) {
                ("live", ..) => "kept (its master lives)".to_owned(),
                ("dead", true, ..) => "removed (its master is dead)".to_owned(),
                ("dead", _, Some(e), _) => format!("master dead, but not removed: {e}"),
                ("dead", _, None, true) => "stale (would be removed)".to_owned(),
                ("dead", ..) => "stale (already gone)".to_owned(),
                (_, _, _, _) => format!("kept ({})", o.detail.as_deref().unwrap_or("unknown")),
            };
            let pid = o.master_pid.map_or("?".to_owned(), |p| p.to_string());
            println!("{:<48} pid {pid:>8}  {what}", o.name);
        }
    }
    // Objects of dead masters that could not be removed make the command
    // fail, after it went through every object.
    Ok(if cleanup.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
