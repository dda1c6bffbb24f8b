//! The command line of the `processes` runner, which has no libtest
//! harness (forked SOCs need a single-threaded master) but takes the
//! arguments of libtest that matter to it, so that `cargo test -- ARGS`
//! means the same to it as to every other test binary.

/// What the command line asks for.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Args {
    /// Positional filters: a scenario runs when its name contains one.
    pub filters: Vec<String>,
    /// `--skip`: a scenario whose name contains one does not run.
    pub skip: Vec<String>,
    /// `--exact`: filters and skips match whole names.
    pub exact: bool,
    /// `--list`: list the scenarios, run none.
    pub list: bool,
    /// `--ignored`: run only ignored scenarios (there are none).
    pub ignored_only: bool,
    /// `--help`.
    pub help: bool,
}

pub const USAGE: &str = "\
Usage: processes [OPTIONS] [FILTER...]

Runs the integration scenarios in forked and spawned SOCs, one at a time.
A scenario (kind::name) runs when it contains a FILTER (or there is none).

Options (those of libtest that matter here):
    --skip PATTERN        skip scenarios whose name contains PATTERN
    --exact               filters and skips match whole names
    --list                list the scenarios, run none
    --ignored             run only ignored scenarios (there are none)
    --include-ignored     accepted (no scenario is ignored)
    --test-threads N      accepted: scenarios run one at a time
    --nocapture, --no-capture, --show-output, -q, --quiet
                          accepted: output is never captured
    --color auto|always|never
                          accepted
    -h, --help            this text";

impl Args {
    /// Parses libtest's arguments (the program name excluded).
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Self, String> {
        let mut out = Self::default();
        let mut args = args.into_iter();
        // `--name value` or `--name=value`.
        fn value(
            name: &str,
            inline: Option<&str>,
            rest: &mut impl Iterator<Item = String>,
        ) -> Result<String, String> {
            match inline {
                Some(v) => Ok(v.to_owned()),
                None => rest
                    .next()
                    .ok_or_else(|| format!("option {name} needs a value")),
            }
        }
        while let Some(arg) = args.next() {
            if !arg.starts_with('-') || arg == "-" {
                out.filters.push(arg);
                continue;
            }
            let (name, inline) = match arg.split_once('=') {
                Some((n, v)) if n.starts_with("--") => (n, Some(v)),
                _ => (arg.as_str(), None),
            };
            let flag = |out: &mut Self| -> Result<(), String> {
                if inline.is_some() {
                    return Err(format!("option {name} takes no value"));
                }
                match name {
                    "--exact" => out.exact = true,
                    "--list" => out.list = true,
                    "--ignored" => out.ignored_only = true,
                    "-h" | "--help" => out.help = true,
                    // Accepted, nothing to change.
                    _ => {}
                }
                Ok(())
            };
            match name {
                "--test-threads" => {
                    let n = value(name, inline, &mut args)?;
                    match n.parse::<usize>() {
                        Ok(n) if n > 0 => {}
                        _ => {
                            return Err(format!(
                                "--test-threads takes a positive number, not {n:?}"
                            ));
                        }
                    }
                }
                "--skip" => out.skip.push(value(name, inline, &mut args)?),
                "--color" => {
                    let when = value(name, inline, &mut args)?;
                    if !matches!(when.as_str(), "auto" | "always" | "never") {
                        return Err(format!("--color takes auto, always or never, not {when:?}"));
                    }
                }
                "--exact" | "--list" | "--ignored" | "--include-ignored" | "--nocapture"
                | "--no-capture" | "--show-output" | "-q" | "--quiet" | "-h" | "--help" => {
                    flag(&mut out)?
                }
                _ => return Err(format!("unknown option {arg:?}")),
            }
        }
        Ok(out)
    }

    /// Whether `pattern` selects `name`.
    fn matches(&self, name: &str, pattern: &str) -> bool {
        if self.exact {
            name == pattern
        } else {
            name.contains(pattern)
        }
    }

    /// Whether scenario `name` (`kind::name`) runs.
    pub fn selects(&self, name: &str) -> bool {
        !self.ignored_only
            && (self.filters.is_empty() || self.filters.iter().any(|f| self.matches(name, f)))
            && !self.skip.iter().any(|s| self.matches(name, s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, String> {
        Args::parse(args.iter().map(|a| (*a).to_owned()))
    }

    const NAMES: &[&str] = &[
        "forked::calls_reach_every_worker",
        "forked::hard_limit_kills_an_overrunning_soc",
        "spawned::calls_on_a_killed_soc_end_in_their_output_or_soc_died",
        "spawned::hard_limit_kills_an_overrunning_soc",
    ];

    fn selected(args: &[&str]) -> Vec<&'static str> {
        let a = parse(args).unwrap();
        NAMES.iter().copied().filter(|n| a.selects(n)).collect()
    }

    #[test]
    fn test_threads_takes_its_value_and_selects_nothing() {
        assert_eq!(selected(&["--test-threads", "1"]), NAMES);
        assert_eq!(selected(&["--test-threads=2"]), NAMES);
        assert!(parse(&["--test-threads"]).is_err());
        assert!(parse(&["--test-threads", "x"]).is_err());
        assert!(parse(&["--test-threads", "0"]).is_err());
    }

    #[test]
    fn skip_leaves_out_what_it_names() {
        assert_eq!(
            selected(&["--skip", "killed"]),
            [NAMES[0], NAMES[1], NAMES[3]]
        );
        assert_eq!(
            selected(&["--skip=hard_limit", "--skip", "spawned"]),
            [NAMES[0]]
        );
        assert!(parse(&["--skip"]).is_err());
    }

    #[test]
    fn filters_select_by_substring_or_whole_name() {
        assert_eq!(selected(&["hard_limit"]), [NAMES[1], NAMES[3]]);
        assert_eq!(
            selected(&["forked::", "killed"]),
            [NAMES[0], NAMES[1], NAMES[2]]
        );
        assert_eq!(selected(&["--exact", "hard_limit"]), [] as [&str; 0]);
        assert_eq!(
            selected(&["--exact", "spawned::hard_limit_kills_an_overrunning_soc"]),
            [NAMES[3]]
        );
        assert_eq!(
            selected(&[
                "--exact",
                "hard",
                "--skip",
                "forked::calls_reach_every_worker"
            ]),
            [] as [&str; 0]
        );
        assert_eq!(
            selected(&["--exact", "--skip", "forked::calls_reach_every_worker"]),
            [NAMES[1], NAMES[2], NAMES[3]]
        );
    }

    #[test]
    fn output_options_are_accepted_and_change_nothing() {
        for a in [
            "--nocapture",
            "--no-capture",
            "--show-output",
            "-q",
            "--quiet",
            "--include-ignored",
            "--color=never",
        ] {
            assert_eq!(selected(&[a]), NAMES, "{a}");
        }
        assert_eq!(selected(&["--color", "always"]), NAMES);
        assert!(parse(&["--color", "pink"]).is_err());
        assert!(parse(&["--nocapture=yes"]).is_err());
    }

    #[test]
    fn list_ignored_and_help_are_understood() {
        assert!(parse(&["--list"]).unwrap().list);
        assert!(parse(&["--help"]).unwrap().help);
        assert!(parse(&["-h"]).unwrap().help);
        // No scenario is ignored: only ignored ones is none.
        assert_eq!(selected(&["--ignored"]), [] as [&str; 0]);
    }

    #[test]
    fn unknown_options_are_refused_naming_them() {
        for a in ["--bogus", "-x", "--format=json", "--test-thread"] {
            let e = parse(&[a]).unwrap_err();
            assert!(e.contains(a), "{a}: {e}");
        }
    }
}
