//! `numaproc status` and `numaproc list`: what a running server says of
//! itself, its SOCs, libraries, procedures and clients.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use numaproc::server::ClientStatus;
use numaproc::sys::SocStats;
use numaproc::{Client, Origin, SocKind, SocState, SocStatus, Target};
use numaproc_procs::stats::fmt_ns;
use serde::Serialize;

use crate::call::{call_once, connect_failed, parse_duration};
use crate::serve::Where;

#[derive(clap::Args)]
pub(crate) struct StatusArgs {
    /// Print JSON: the server's status, each SOC's statistics (`stats`,
    /// null with `stats_error` when the SOC did not answer), the
    /// libraries, and each procedure's calls, errors, p50_ns and p99_ns.
    #[arg(long)]
    json: bool,
    /// How long to wait for each SOC's statistics (an idle worker, then
    /// the answer); a SOC that does not answer in time is shown as such.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_duration)]
    timeout: Duration,
    #[command(flatten)]
    server: Where,
}

#[derive(clap::Args)]
pub(crate) struct ListArgs {
    /// Print JSON: the server's name and its procedures, each with `id`,
    /// `name`, `origin` (built-in, registered or library) and, for a
    /// library's, `library` {name, version}.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    server: Where,
}

/// Where a procedure comes from, in words: `built-in`, `registered` or
/// `library`.
fn origin_kind(origin: &Origin) -> &'static str {
    match origin {
        Origin::Builtin => "built-in",
        Origin::Registered => "registered",
        Origin::Library { .. } => "library",
    }
}

/// A library as `--json` prints it.
#[derive(Serialize)]
struct LibraryJson<'a> {
    name: &'a str,
    version: &'a str,
}

fn library_of(origin: &Origin) -> Option<LibraryJson<'_>> {
    match origin {
        Origin::Library { name, version } => Some(LibraryJson { name, version }),
        _ => None,
    }
}

/// `origin_kind`, and a library's name and version.
fn origin_text(origin: &Origin) -> String {
    match library_of(origin) {
        Some(l) => format!("library {} {}", l.name, l.version),
        None => origin_kind(origin).to_owned(),
    }
}

/// A procedure as `numaproc list --json` prints it.
#[derive(Serialize)]
struct ProcJson<'a> {
    id: u32,
    name: &'a str,
    origin: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    library: Option<LibraryJson<'a>>,
}

pub(crate) fn list(args: ListArgs) -> Result<ExitCode> {
    let client = match Client::connect_with(&args.server.name, &args.server.options()) {
        Ok(c) => c,
        Err(e) => return Ok(connect_failed(&e)),
    };
    if args.json {
        #[derive(Serialize)]
        struct ListJson<'a> {
            name: &'a str,
            procedures: Vec<ProcJson<'a>>,
        }
        let all: Vec<_> = client.procedures().collect();
        let procedures = all
            .iter()
            .map(|p| ProcJson {
                id: p.id.index(),
                name: &p.name,
                origin: origin_kind(&p.origin),
                library: library_of(&p.origin),
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&ListJson {
                name: client.name(),
                procedures
            })?
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!("{:>4}  {:<32} ORIGIN", "ID", "NAME");
    for p in client.procedures() {
        println!(
            "{:>4}  {:<32} {}",
            p.id.index(),
            p.name,
            origin_text(&p.origin)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// One SOC in `numaproc status`: what the server says of it, and what its
/// `sys_stats` says (or why it said nothing).
#[derive(Serialize)]
struct SocJson<'a> {
    #[serde(flatten)]
    status: &'a SocStatus,
    stats: Option<SocStats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stats_error: Option<String>,
}

/// A procedure in `numaproc status`: calls and errors summed over the SOCs
/// that answered, p50 and p99 the largest of theirs.
#[derive(Serialize)]
struct ProcStatusJson<'a> {
    id: u32,
    name: &'a str,
    origin: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    library: Option<LibraryJson<'a>>,
    calls: u64,
    errors: u64,
    p50_ns: u64,
    p99_ns: u64,
}

/// A library in `numaproc status`: how many procedures it exports.
#[derive(Serialize)]
struct LibraryStatusJson<'a> {
    name: &'a str,
    version: &'a str,
    procedures: usize,
}

/// What `numaproc status --json` prints.
#[derive(Serialize)]
struct StatusJson<'a> {
    name: &'a str,
    pid: u32,
    uptime_ms: u64,
    soc_kind: SocKind,
    state_dir: &'a std::path::Path,
    socs: Vec<SocJson<'a>>,
    /// SOCs whose statistics the procedures' counts sum.
    socs_answered: usize,
    libraries: Vec<LibraryStatusJson<'a>>,
    procedures: Vec<ProcStatusJson<'a>>,
    clients: &'a [ClientStatus],
}

/// A ready SOC's `sys_stats`, or why there is none.
fn soc_stats(client: &Client, soc: &SocStatus, timeout: Duration) -> Result<SocStats, String> {
    if soc.state != SocState::Ready {
        return Err(format!("the SOC is {}", soc.state));
    }
    let proc = client.proc_id("sys_stats").map_err(|e| e.to_string())?;
    let called = call_once(
        client,
        Target::Soc(soc.soc),
        proc,
        b"",
        timeout,
        |out: &[u8]| serde_json::from_slice::<SocStats>(out),
    );
    match called.result {
        Ok(Ok(stats)) => Ok(stats),
        Ok(Err(e)) => Err(format!("its sys_stats output: {e}")),
        Err(e) => Err(e.to_string()),
    }
}

pub(crate) fn status(args: StatusArgs) -> Result<ExitCode> {
    let options = args
        .server
        .options()
        .claim_timeout(args.timeout)
        .call_timeout(args.timeout);
    let client = match Client::connect_with(&args.server.name, &options) {
        Ok(c) => c,
        Err(e) => return Ok(connect_failed(&e)),
    };
    let status = match client.status(Duration::from_secs(5)) {
        Ok(s) => s,
        Err(e) => return Ok(connect_failed(&e)),
    };
    let socs: Vec<SocJson<'_>> = status
        .socs
        .iter()
        .map(|s| {
            let (stats, stats_error) = match soc_stats(&client, s, args.timeout) {
                Ok(stats) => (Some(stats), None),
                Err(e) => (None, Some(e)),
            };
            SocJson {
                status: s,
                stats,
                stats_error,
            }
        })
        .collect();
    let answered: Vec<&SocStats> = socs.iter().filter_map(|s| s.stats.as_ref()).collect();
    let all: Vec<_> = client.procedures().collect();
    let procedures: Vec<ProcStatusJson<'_>> = all
        .iter()
        .map(|p| {
            let id = p.id.index();
            let per_soc = answered
                .iter()
                .filter_map(|s| s.procs.iter().find(|ps| ps.id == id));
            let (mut calls, mut errors, mut p50_ns, mut p99_ns) = (0, 0, 0, 0);
            for ps in per_soc {
                calls += ps.calls;
                errors += ps.errors;
                p50_ns = p50_ns.max(ps.p50_ns);
                p99_ns = p99_ns.max(ps.p99_ns);
            }
            ProcStatusJson {
                id,
                name: &p.name,
                origin: origin_kind(&p.origin),
                library: library_of(&p.origin),
                calls,
                errors,
                p50_ns,
                p99_ns,
            }
        })
        .collect();
    let mut libraries: Vec<LibraryStatusJson<'_>> = Vec::new();
    for p in &all {
        let Some(lib) = library_of(&p.origin) else {
            continue;
        };
        match libraries
            .iter_mut()
            .find(|l| (l.name, l.version) == (lib.name, lib.version))
        {
            Some(l) => l.procedures += 1,
            None => libraries.push(LibraryStatusJson {
                name: lib.name,
                version: lib.version,
                procedures: 1,
            }),
        }
    }
    let out = StatusJson {
        name: &status.name,
        pid: status.pid,
        uptime_ms: status.uptime_ms,
        soc_kind: status.soc_kind,
        state_dir: &status.state_dir,
        socs_answered: answered.len(),
        socs,
        libraries,
        procedures,
        clients: &status.clients,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print_status(&out);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_status(status: &StatusJson<'_>) {
    println!(
        "server {}: pid {}, up {:.1} s, {} SOCs, state in {}",
        status.name,
        status.pid,
        status.uptime_ms as f64 / 1e3,
        status.soc_kind,
        status.state_dir.display()
    );
    for s in &status.socs {
        let st = s.status;
        println!(
            "  SOC {} (node {}): {}, pid {}, {} worker(s), {} call(s), {} restart(s){}",
            st.soc,
            st.node,
            st.state,
            st.pid,
            st.workers,
            st.calls,
            st.restarts,
            st.last_error
                .as_deref()
                .map(|e| format!(", last error: {e}"))
                .unwrap_or_default()
        );
        for w in 0..st.workers {
            let cpu = match st.cpus.get(w).copied().flatten() {
                Some(c) => format!("CPU {c}"),
                None => "not pinned".to_owned(),
            };
            let counts = s
                .stats
                .as_ref()
                .and_then(|stats| stats.workers.iter().find(|ws| ws.worker as usize == w))
                .map(|ws| format!(", {} call(s), {} error(s)", ws.calls, ws.errors))
                .unwrap_or_default();
            println!("    worker {w}: {cpu}{counts}");
        }
        if let Some(e) = &s.stats_error {
            println!("    no statistics: {e}");
        }
    }
    if status.libraries.is_empty() {
        println!("  libraries: none");
    } else {
        println!("  libraries:");
        for l in &status.libraries {
            println!(
                "    {} {} ({} procedure(s))",
                l.name, l.version, l.procedures
            );
        }
    }
    println!(
        "  procedures: {} (calls and errors: the sum over {} of {} SOC(s); p50 and p99: the largest of theirs)",
        status.procedures.len(),
        status.socs_answered,
        status.socs.len()
    );
    println!(
        "    {:>4}  {:<32} {:<24} {:>10} {:>8} {:>10} {:>10}",
        "ID", "NAME", "ORIGIN", "CALLS", "ERRORS", "P50", "P99"
    );
    for p in &status.procedures {
        let origin = match &p.library {
            Some(l) => format!("library {} {}", l.name, l.version),
            None => p.origin.to_owned(),
        };
        let time = |ns: u64| {
            if p.calls == 0 {
                "-".to_owned()
            } else {
                fmt_ns(ns as f64)
            }
        };
        println!(
            "    {:>4}  {:<32} {:<24} {:>10} {:>8} {:>10} {:>10}",
            p.id,
            p.name,
            origin,
            p.calls,
            p.errors,
            time(p.p50_ns),
            time(p.p99_ns)
        );
    }
    // This command is a client too: it is among them.
    println!("  clients: {}", status.clients.len());
    for c in status.clients {
        println!("    #{:<6} pid {:<8} uid {}", c.holder, c.pid, c.uid);
    }
}
