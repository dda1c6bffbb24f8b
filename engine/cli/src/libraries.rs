//! `numaproc libs`: load, unload, upgrade and list the procedure libraries
//! of a running server.

use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;
use numaproc::{Client, LibraryError, LibraryInfo};

use crate::call::connect_failed;
use crate::serve::Where;

/// Exit status of a change the server refused or could not make.
const EXIT_REFUSED: u8 = 1;
/// Exit status when the request did not reach the server or its answer
/// did not come back.
const EXIT_LOST: u8 = 5;

#[derive(clap::Args)]
pub(crate) struct LibsArgs {
    #[command(subcommand)]
    command: LibsCommand,
}

#[derive(Subcommand)]
enum LibsCommand {
    /// Load a library into every SOC, one SOC at a time while the others
    /// serve. All or none: if a SOC cannot load it, no SOC keeps it.
    ///
    /// Exit status: 0 loaded; 1 refused or not loadable (the message names
    /// the SOC and the reason); 2 bad arguments; 3 no server could be
    /// reached; 5 the request or its answer was lost.
    Load {
        /// The library: a name or a path inside the server's library_dir
        /// (`{soc}` stands for the SOC index).
        library: String,
        #[command(flatten)]
        server: Where,
        /// Print the library loaded as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Unload a library: its procedures no longer resolve, calls in
    /// flight end, and each SOC is restarted without it; once this
    /// returns, no SOC maps the file.
    ///
    /// Exit status as for `load`.
    Unload {
        /// The library's name (as `libs list` shows it).
        library: String,
        #[command(flatten)]
        server: Where,
        /// Print the library unloaded as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Replace a library by another version of itself, one SOC at a time:
    /// every call meanwhile runs the old or the new version, and its
    /// procedures keep their ids. If a SOC cannot load the new version,
    /// every SOC keeps the old one.
    ///
    /// Exit status as for `load`.
    Upgrade {
        /// The library's name (as `libs list` shows it).
        library: String,
        /// The new version's file (a name or path inside library_dir);
        /// default: the file it was loaded from, replaced on disk.
        file: Option<String>,
        #[command(flatten)]
        server: Where,
        /// Print the library upgraded as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the libraries a server serves, in load order: name, version,
    /// file, procedures and when it was loaded.
    ///
    /// Exit status: 0 listed; 2 bad arguments; 3 no server could be
    /// reached; 5 the request or its answer was lost.
    List {
        #[command(flatten)]
        server: Where,
        /// Print JSON: a list of {name, version, entry, path, procedures
        /// [{name, id}], loaded_at_ms}.
        #[arg(long)]
        json: bool,
    },
}

pub(crate) fn libs(args: LibsArgs) -> Result<ExitCode> {
    let (server, json) = match &args.command {
        LibsCommand::Load { server, json, .. }
        | LibsCommand::Unload { server, json, .. }
        | LibsCommand::Upgrade { server, json, .. }
        | LibsCommand::List { server, json } => (server, *json),
    };
    let client = match Client::connect_with(&server.name, &server.options()) {
        Ok(c) => c,
        Err(e) => return Ok(connect_failed(&e)),
    };
    let (what, result) = match &args.command {
        LibsCommand::List { .. } => {
            return Ok(match client.libraries() {
                Ok(list) => {
                    print_list(&list, json)?;
                    ExitCode::SUCCESS
                }
                Err(e) => failed(&e),
            });
        }
        LibsCommand::Load { library, .. } => ("loaded", client.load_library(library)),
        LibsCommand::Unload { library, .. } => ("unloaded", client.unload_library(library)),
        LibsCommand::Upgrade { library, file, .. } => {
            ("upgraded", client.upgrade_library(library, file.as_deref()))
        }
    };
    Ok(match result {
        Ok(lib) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&lib)?);
            } else {
                println!(
                    "{what} library {} {} ({}): {}",
                    lib.name,
                    lib.version,
                    lib.path,
                    names(&lib)
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => failed(&e),
    })
}

fn failed(e: &LibraryError) -> ExitCode {
    eprintln!("numaproc: {e}");
    match e {
        LibraryError::Server(_) => ExitCode::from(EXIT_LOST),
        _ => ExitCode::from(EXIT_REFUSED),
    }
}

fn names(lib: &LibraryInfo) -> String {
    lib.procedures
        .iter()
        .map(|p| p.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn print_list(list: &[LibraryInfo], json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(list)?);
        return Ok(());
    }
    if list.is_empty() {
        println!("no libraries");
        return Ok(());
    }
    println!(
        "{:<16} {:<10} {:<24} {:>5}  PROCEDURES",
        "NAME", "VERSION", "LOADED", "COUNT"
    );
    for lib in list {
        println!(
            "{:<16} {:<10} {:<24} {:>5}  {}",
            lib.name,
            lib.version,
            loaded_at(lib.loaded_at_ms),
            lib.procedures.len(),
            names(lib)
        );
        match &lib.failed {
            Some(why) => println!("    {} (entry {}) FAILED: {why}", lib.name, lib.entry),
            None => println!("    {}", lib.path),
        }
        for s in lib.socs.iter().filter(|s| s.path != lib.path) {
            println!("    SOC {}: {} ({})", s.soc, s.path, s.state);
        }
    }
    Ok(())
}

/// A time as `YYYY-MM-DD hh:mm:ss UTC`.
fn loaded_at(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_civil_dates() {
        assert_eq!(loaded_at(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(loaded_at(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(loaded_at(1_796_210_645_000), "2026-12-02 11:24:05 UTC");
    }
}
