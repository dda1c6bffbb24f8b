//! An engine refuses to start inside a spawned SOC whose `main` did not call
//! `run_if_spawned` (which would otherwise spawn SOCs recursively). The only
//! test of this binary, so setting the environment cannot race another test.

#[test]
fn an_engine_refuses_to_start_inside_a_spawned_soc() {
    // SAFETY: no other thread of this test binary reads the environment
    // while this single test runs.
    unsafe { std::env::set_var("NUMAPROC_SOC_ENGINE", "numaproc-x-1-0-g") };
    let e = numaproc::Engine::start(numaproc::EngineOptions::new().name_prefix("insidesoc"))
        .unwrap_err();
    assert!(matches!(e, numaproc::StartError::InsideSpawnedSoc), "{e}");
    assert!(e.to_string().contains("run_if_spawned"), "{e}");
}
