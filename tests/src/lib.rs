//! Scenarios shared by the integration test runners: each takes the SOC kind
//! to run, starts its own engine under its own name prefix, checks one
//! behaviour, shuts down, and checks that nothing was left behind.
//!
//! Every scenario is registered once, in [`for_each_scenario!`], with the
//! SOC kinds it runs in. [`ALL`] is that list as a table; `emulated.rs`
//! makes an ordinary test of each scenario that runs in emulated SOCs
//! (through the same macro), and `processes.rs` runs, from a
//! single-threaded `main` (forked SOCs need a master without other
//! threads), each scenario of `ALL` that runs in forked, then in spawned
//! SOCs, each under an `alarm` watchdog.
//!
//! The areas: [`support`] (what every scenario shares), [`procedures`] (the
//! Rust procedures the scenarios register), [`start`], [`calls`],
//! [`errors`], [`libraries`], [`supervision`], [`boundary`] and
//! [`isolation`].

pub mod boundary;
pub mod calls;
pub mod errors;
pub mod isolation;
pub mod libraries;
pub mod live_libraries;
pub mod procedures;
pub mod runner;
pub mod start;
pub mod supervision;
pub mod support;

/// The README's library example, run by
/// [`start::the_readme_example_runs_and_leaves_nothing`].
#[path = "../../engine/examples/basic.rs"]
mod readme_example;

use anyhow::{Context, Result};
pub use numaproc::SocKind;

pub use supervision::{HELPER_ENV, helper_master};

/// The one registration of the scenarios: each, as `area::name`, under the
/// list of SOC kinds it runs in.
///
/// `for_each_scenario!(Kind => callback)`, with `Kind` one of `Emulated`,
/// `Forked` or `Spawned`, expands to `callback!(area::name);` for every
/// scenario that runs in that kind (in items or in statements); the crate
/// builds [`ALL`] from the same list.
#[macro_export]
macro_rules! for_each_scenario {
    ($($how:tt)+) => {
        $crate::__scenarios! {
            ($($how)+)
            // Rust procedures registered in the master: emulated and forked
            // SOCs (a spawned SOC is a fresh exec, which has none).
            [Emulated, Forked] {
                start::workers_are_pinned_to_their_planned_cpu,
                start::synthetic_four_node_plan_runs,
                start::each_soc_runs_in_the_process_its_kind_says,
                start::a_failing_start_hook_stops_the_start_naming_the_soc,
                start::a_start_up_timeout_does_not_wait_for_a_busy_start_hook,
                start::a_tiny_start_up_timeout_starts_or_fails_cleanly,
                calls::calls_reach_every_worker,
                calls::sys_list_procs_lists_builtins_and_registered_procedures,
                calls::concurrent_sessions_get_their_own_output,
                calls::zero_copy_claim_and_read,
                calls::a_refused_submit_frees_its_worker,
                calls::dropped_sessions_never_leak_workers,
                calls::large_buffers_carry_64_mib,
                calls::deadlines_reach_procedures_as_cancellation,
                calls::call_within_bounds_the_whole_call,
                calls::absurd_timeouts_are_no_limit,
            }
            // Procedure libraries, built-ins, and starts without Rust
            // procedures (or with them only where the kind has them):
            // every kind.
            [Emulated, Forked, Spawned] {
                calls::every_size_comes_back_whole_and_echo_answers_in_place,
                start::a_supervisor_that_cannot_start_leaves_nothing,
                start::an_engine_dropped_without_shutdown_leaves_nothing,
                errors::unknown_procedures_are_proc_not_found,
                errors::oversized_input_is_refused_before_reaching_a_worker,
                errors::oversized_output_is_output_too_large,
                errors::procedure_errors_carry_their_code_and_message,
                errors::panics_are_typed_and_the_worker_serves_on,
                errors::no_idle_worker_is_busy_or_a_claim_timeout,
                errors::every_try_form_is_busy_while_no_worker_is_idle,
                errors::a_call_timeout_leaves_the_call_to_its_session,
                errors::unknown_targets_are_no_such_target,
                errors::workers_count_failed_calls,
                libraries::example_libraries_serve_in_every_soc,
                libraries::library_errors_come_back_typed,
                libraries::sys_list_procs_names_each_procedures_origin,
                libraries::soc_placeholders_give_each_soc_its_own_library,
                libraries::socs_whose_libraries_differ_stop_the_start,
                libraries::libraries_without_a_usable_descriptor_are_refused,
                libraries::libraries_listing_unusable_procedures_are_refused,
                libraries::a_library_whose_init_fails_is_refused,
                libraries::a_library_using_a_reserved_name_is_refused,
                libraries::a_library_registering_a_taken_name_is_refused,
                libraries::libraries_outside_library_dir_are_refused,
                libraries::libraries_others_could_replace_are_refused,
                libraries::a_missing_library_is_refused,
                live_libraries::a_library_loads_while_callers_call_other_procedures,
                live_libraries::a_load_one_soc_cannot_take_leaves_every_soc_without_it,
                live_libraries::an_unload_under_calls_ends_in_results_or_proc_not_found,
                live_libraries::an_upgrade_under_callers_fails_no_call,
                live_libraries::a_claim_held_when_a_restart_begins_still_submits,
                live_libraries::a_one_soc_engine_changes_libraries_under_calls,
                live_libraries::a_soc_that_can_take_neither_plan_is_given_up,
                libraries::a_library_built_for_a_newer_abi_minor_is_refused,
                libraries::a_library_is_deinitialised_after_its_workers_stopped,
                libraries::c_procedures_see_cancellation_through_is_cancelled,
            }
            // SOCs in processes of their own, which can die alone.
            [Forked, Spawned] {
                supervision::crashing_procedures_end_in_soc_died,
                supervision::calls_on_a_killed_soc_end_in_their_output_or_soc_died,
                supervision::other_socs_serve_while_one_is_killed,
                supervision::dropped_claims_and_sessions_across_a_soc_death_leak_no_worker,
                supervision::a_given_up_soc_is_unavailable,
                supervision::restart_backoff_doubles_to_its_cap_and_deaths_leave_the_window,
                supervision::a_killed_soc_is_restarting_during_its_backoff_or_given_up,
                supervision::a_restart_runs_its_process_during_the_backoff_and_serves_after_it,
                supervision::any_target_calls_go_around_a_restarting_soc,
                supervision::hard_limit_kills_an_overrunning_soc,
                supervision::a_killed_masters_socs_are_gone_within_a_second,
                supervision::a_start_removes_a_killed_masters_shared_memory,
                boundary::report_pipe_writes_and_closes_fake_no_death,
                boundary::scribbling_on_shared_memory_fools_no_one,
                boundary::a_restarted_soc_serves_the_table_the_engine_started_with,
                boundary::a_restarted_soc_leaves_held_output_alone,
                boundary::a_soc_writing_into_its_report_pipe_at_start_up_is_killed,
                boundary::a_soc_closing_its_report_pipe_at_start_up_is_killed,
                isolation::socs_inherit_no_descriptor_of_the_application,
                isolation::a_procedures_child_inherits_nothing_of_its_soc,
                isolation::a_procedures_background_child_does_not_hide_its_socs_death,
                // A helper master of the processes runner.
                libraries::library_logs_are_filtered_by_numaproc_log,
                live_libraries::a_soc_that_does_not_end_is_killed_and_the_change_goes_on,
            }
            // Forked SOCs: a fork of the master, through the zygote.
            [Forked] {
                start::a_soc_aborting_in_its_start_hook_stops_the_start_naming_the_signal,
                start::another_thread_refuses_forked_socs_unless_allowed,
                start::the_readme_example_runs_and_leaves_nothing,
                isolation::forked_socs_map_no_other_engines_memory,
                isolation::forked_socs_map_their_own_region_and_not_their_siblings,
            }
            // Spawned SOCs: a fresh exec of the SOC executable.
            [Spawned] {
                start::spawned_engines_refuse_registered_procedures,
                start::spawned_socs_that_cannot_serve_fail_the_start,
                start::spawned_soc_is_a_fresh_exec,
                isolation::spawned_socs_start_with_standard_descriptors_closed,
            }
        }
    };
}

/// What [`for_each_scenario!`] does with its list: builds [`ALL`]
/// (`(@table)`), or calls back for each scenario of one kind.
#[doc(hidden)]
#[macro_export]
macro_rules! __scenarios {
    ((@table) $($kinds:tt { $($area:ident :: $name:ident),+ $(,)? })+) => {
        /// Every scenario, with the SOC kinds it runs in.
        pub const ALL: &[$crate::Scenario] = &[
            $($(
                $crate::Scenario {
                    name: stringify!($name),
                    area: stringify!($area),
                    run: $crate::$area::$name,
                    kinds: $crate::__kinds! $kinds,
                },
            )+)+
        ];
    };
    (($kind:ident => $callback:ident) $($kinds:tt { $($area:ident :: $name:ident),+ $(,)? })+) => {
        // Only a kind that exists: another name would select nothing.
        const _: &[$crate::SocKind] = $crate::__kinds![$kind];
        $($crate::__if_runs_in! { $kind $kinds $callback { $($area::$name)+ } })+
    };
}

/// `[A, B]` as a `&[SocKind]`.
#[doc(hidden)]
#[macro_export]
macro_rules! __kinds {
    ($($kind:ident),+) => {
        &[$($crate::SocKind::$kind),+]
    };
}

/// Calls back for each scenario of a group if its kinds include the one
/// wanted.
#[doc(hidden)]
#[macro_export]
macro_rules! __if_runs_in {
    (Emulated [Emulated $(, $rest:ident)*] $callback:ident $list:tt) => {
        $crate::__each! { $callback $list }
    };
    (Forked [Forked $(, $rest:ident)*] $callback:ident $list:tt) => {
        $crate::__each! { $callback $list }
    };
    (Spawned [Spawned $(, $rest:ident)*] $callback:ident $list:tt) => {
        $crate::__each! { $callback $list }
    };
    ($want:ident [$other:ident $(, $rest:ident)*] $callback:ident $list:tt) => {
        $crate::__if_runs_in! { $want [$($rest),*] $callback $list }
    };
    ($want:ident [] $callback:ident $list:tt) => {};
}

/// `callback!(area::name);` for each scenario of a list.
#[doc(hidden)]
#[macro_export]
macro_rules! __each {
    ($callback:ident { $($area:ident :: $name:ident)+ }) => {
        $($callback!($area::$name);)+
    };
}

/// A scenario: its name, its area (the module it is in), what runs it, and
/// the SOC kinds it runs in.
#[derive(Debug, Clone, Copy)]
pub struct Scenario {
    /// The function's name.
    pub name: &'static str,
    /// The module the function is in.
    pub area: &'static str,
    /// Runs the scenario with SOCs of one kind.
    pub run: fn(SocKind) -> Result<()>,
    /// The kinds it runs in.
    pub kinds: &'static [SocKind],
}

impl Scenario {
    /// Whether the scenario runs in SOCs of `kind`.
    pub fn runs_in(&self, kind: SocKind) -> bool {
        self.kinds.contains(&kind)
    }

    /// Runs the scenario in SOCs of `kind`, its name added to its error.
    pub fn run_in(&self, kind: SocKind) -> Result<()> {
        run_named(self.name, || (self.run)(kind))
    }
}

for_each_scenario!(@table);

/// Runs `f` and adds the scenario's name to its error.
pub fn run_named(name: &str, f: impl FnOnce() -> Result<()>) -> Result<()> {
    f().with_context(|| format!("scenario {name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names of the scenarios that [`for_each_scenario!`] calls back
    /// for in `kind`.
    macro_rules! called_back {
        ($kind:ident) => {{
            let mut names: Vec<&str> = Vec::new();
            macro_rules! push {
                ($area:ident :: $name:ident) => {
                    names.push(stringify!($name))
                };
            }
            for_each_scenario!($kind => push);
            names
        }};
    }

    #[test]
    fn scenario_names_are_unique() {
        let mut names: Vec<&str> = ALL.iter().map(|s| s.name).collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(names.len(), before, "a name is registered twice");
    }

    #[test]
    fn every_scenario_runs_in_a_kind_and_every_kind_has_scenarios() {
        for s in ALL {
            assert!(!s.kinds.is_empty(), "{} runs nowhere", s.name);
        }
        for kind in [SocKind::Emulated, SocKind::Forked, SocKind::Spawned] {
            assert!(ALL.iter().any(|s| s.runs_in(kind)), "none runs in {kind}");
        }
    }

    #[test]
    fn the_callbacks_for_a_kind_are_its_scenarios_in_the_table() {
        for (kind, called) in [
            (SocKind::Emulated, called_back!(Emulated)),
            (SocKind::Forked, called_back!(Forked)),
            (SocKind::Spawned, called_back!(Spawned)),
        ] {
            let table: Vec<&str> = ALL
                .iter()
                .filter(|s| s.runs_in(kind))
                .map(|s| s.name)
                .collect();
            assert_eq!(called, table, "{kind}");
        }
    }
}
