//! The shared scenarios with emulated SOCs (threads of this process), as
//! ordinary tests, each under a watchdog: one test for each scenario that
//! `numaproc_integration::for_each_scenario!` lists for emulated SOCs.
//! Then tests of this process alone: options and registrations refused,
//! the library loader, stale objects, the session core attached.

use std::sync::mpsc;
use std::time::Duration;

use numaproc::SocKind;
use numaproc_integration as it;
use numaproc_integration::procedures::{options, reverse};
use numaproc_integration::support::{
    LibDir, assert_nothing_left, fixture, rust_example, shm_objects,
};

/// Aborts the test process if the guarded test runs longer than `limit`.
struct Watchdog(Option<mpsc::Sender<()>>);

impl Watchdog {
    fn new(name: &'static str, limit: Duration) -> Self {
        let (tx, rx) = mpsc::channel::<()>();
        std::thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
                eprintln!("watchdog: {name} ran longer than {limit:?}; aborting");
                std::process::abort();
            }
        });
        Self(Some(tx))
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.0.take();
    }
}

/// An ordinary test of scenario `area::name` with emulated SOCs.
macro_rules! emulated {
    ($area:ident :: $name:ident) => {
        #[test]
        fn $name() {
            let _w = Watchdog::new(stringify!($name), Duration::from_secs(120));
            it::run_named(stringify!($name), || it::$area::$name(SocKind::Emulated)).unwrap();
        }
    };
}

it::for_each_scenario!(Emulated => emulated);

#[test]
fn forked_kind_refuses_a_multithreaded_master() {
    let _w = Watchdog::new(
        "forked_kind_refuses_a_multithreaded_master",
        Duration::from_secs(60),
    );
    // The test harness and the watchdog are threads of this process.
    let e = numaproc::Engine::start(options(SocKind::Forked, "threads")).unwrap_err();
    assert!(
        matches!(e, numaproc::StartError::ForkWithThreads { threads } if threads > 1),
        "{e}"
    );
    assert_nothing_left("t_threads_forked", &[]).unwrap();
}

#[test]
fn sys_names_are_refused_at_registration() {
    let e = numaproc::EngineOptions::new()
        .register("sys_mine", reverse)
        .unwrap_err();
    assert_eq!(e, numaproc::RegisterError::Reserved("sys_mine".into()));
}

#[test]
fn a_name_registered_twice_is_refused() {
    let e = numaproc::EngineOptions::new()
        .register("x", reverse)
        .and_then(|o| o.register("x", reverse))
        .unwrap_err();
    assert_eq!(e, numaproc::RegisterError::Duplicate("x".into()));
}

#[test]
fn zero_workers_per_soc_stop_the_start_naming_the_option() {
    let e = numaproc::Engine::start(numaproc::EngineOptions::new().workers_per_soc(0)).unwrap_err();
    assert!(
        matches!(
            e,
            numaproc::StartError::Options(numaproc::OptionsError::Invalid {
                option: "workers_per_soc",
                ..
            })
        ),
        "{e}"
    );
}

#[test]
fn an_invalid_synthetic_topology_stops_the_start() {
    let e = numaproc::Engine::start(numaproc::EngineOptions::new().synthetic_topology("node:x"))
        .unwrap_err();
    assert!(
        matches!(
            e,
            numaproc::StartError::Topology(numaproc::TopologyError::InvalidSynthetic { .. })
        ),
        "{e}"
    );
}

#[test]
fn a_hard_limit_with_emulated_socs_stops_the_start_naming_the_option() {
    let e = numaproc::Engine::start(
        numaproc::EngineOptions::new().hard_limit(std::time::Duration::from_secs(1)),
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            numaproc::StartError::Options(numaproc::OptionsError::Invalid {
                option: "hard_limit_ms",
                ..
            })
        ),
        "{e}"
    );
}

/// What the loader checked is what it loads: a library swapped in after
/// the checks (same path, another file) is not the one loaded.
#[test]
fn a_library_swapped_after_its_checks_is_not_loaded() {
    use numaproc_procs::library;
    let libs = LibDir::new("swap").unwrap();
    // The checked library has no init (none of it runs here but the
    // descriptor function); the other would be recognised by its names.
    libs.add(&fixture("good_fixture"), "libtarget.so", 0o644)
        .unwrap();
    libs.add(&fixture("numaproc_example_c"), "libother.so", 0o644)
        .unwrap();
    let checked = library::open(libs.path(), "target", 0).unwrap();
    // The swap: another library renamed over the checked path.
    std::fs::rename(
        libs.path().join("libother.so"),
        libs.path().join("libtarget.so"),
    )
    .unwrap();
    let mut registry = numaproc_procs::Registry::new();
    // SAFETY: a test fixture built for this ABI; no host table is used by
    // its init (it has none) and the library is dropped below.
    let loaded = unsafe { library::load(checked, &mut registry, std::ptr::null()) }.unwrap();
    assert_eq!(loaded.name(), "badlib", "the checked file was loaded");
    assert!(registry.id("bad.nop").is_some());
    assert!(
        registry.id("c.crc32").is_none(),
        "the swapped-in file was not"
    );
    drop(loaded);
}

/// The dynamic loader knows a library by the name it was opened with
/// (`/proc/self/fd/N`): a library opened later under the descriptor number
/// that an earlier, still loaded library was opened with must not be taken
/// for that earlier one.
#[test]
fn descriptor_names_of_loaded_libraries_are_not_reused() {
    use numaproc_procs::library;
    let libs = LibDir::new("fdnames").unwrap();
    // Two libraries without init: bad.nop, and c.crc32.
    libs.add(&fixture("good_fixture"), "liba.so", 0o644)
        .unwrap();
    libs.add(&fixture("dup_name"), "libb.so", 0o644).unwrap();
    let load = |name: &str| {
        let file = library::open(libs.path(), name, 0).unwrap();
        let mut registry = numaproc_procs::Registry::new();
        // SAFETY: test fixtures built for this ABI, without init.
        let loaded = unsafe { library::load(file, &mut registry, std::ptr::null()) }.unwrap();
        (loaded, registry)
    };
    // The same file loaded twice (as two emulated SOCs do), the first
    // copy then dropped while the second keeps the library loaded.
    let (first, _) = load("a");
    let (second, _) = load("a");
    drop(first);
    // Another library now; it may get the first copy's descriptor number.
    let (third, registry) = load("b");
    assert!(
        registry.id("c.crc32").is_some() && registry.id("bad.nop").is_none(),
        "library b was taken for library a"
    );
    drop(third);
    drop(second);
}

/// A master whose pid is the same as a dead one's (in a container, the
/// master is always pid 1) finds objects under the very names it is about
/// to create: they are removed, and the start succeeds.
#[test]
fn a_dead_masters_objects_under_this_pid_do_not_block_the_start() {
    use numaproc_ipc::layout::GlobalLayout;
    use numaproc_ipc::{Region, ShmName};
    let _w = Watchdog::new("pid_reuse", Duration::from_secs(60));
    let prefix = "t_pidreuse";
    let layout = GlobalLayout {
        soc_count: 0,
        name_count: 0,
        settings_len: 0,
        slot_count: 0,
    };
    // Every name this process's next engines can take: the sequence
    // number is process-wide, and other tests of this binary start engines.
    for seq in 0..300 {
        for what in ["g", "s0"] {
            let name = ShmName::new(prefix, std::process::id(), seq, what).unwrap();
            let mut r = Region::create(&name, layout.size(), GlobalLayout::SHAPE).unwrap();
            // Its creator "dies": the name stays, the lock goes.
            r.unlink_on_drop(false);
        }
    }
    assert_eq!(shm_objects(prefix).len(), 600);
    let engine = numaproc::Engine::start(
        numaproc::EngineOptions::new()
            .soc_kind(numaproc::SocKind::Emulated)
            .name_prefix(prefix)
            .socs(1)
            .workers_per_soc(1),
    )
    .expect("the stale objects are removed, not in the way");
    assert_eq!(engine.call("sys_echo", b"up").unwrap(), b"up");
    assert_eq!(
        shm_objects(prefix).len(),
        2,
        "only the new engine's objects remain"
    );
    engine.shutdown().unwrap();
    assert_nothing_left(prefix, &[]).unwrap();
}

/// The session core can be built from an engine's shared memory alone, as
/// a process that only maps it will, and calls the same workers through the
/// same code, with the same procedure ids.
#[test]
fn a_session_core_attached_to_the_regions_calls_the_engines_workers() {
    use numaproc_ipc::layout::{GlobalLayout, SocLayout};
    use numaproc_ipc::{Region, ShmName};
    use std::sync::Arc;
    let _w = Watchdog::new("attach", Duration::from_secs(60));
    let libs = LibDir::new("attach").unwrap();
    libs.add(&rust_example().unwrap(), "libnumaproc_example.so", 0o644)
        .unwrap();
    let engine = numaproc::Engine::start(
        options(SocKind::Emulated, "attach")
            .socs(2)
            .workers_per_soc(1)
            .library_dir(libs.path())
            .library("numaproc_example"),
    )
    .unwrap();
    let open = |name: &str, shape| {
        let name = ShmName::parse(name).unwrap();
        Arc::new(Region::open(&name, shape, Duration::from_secs(5)).unwrap())
    };
    let names = engine.shm_names();
    let global = open(&names[0], GlobalLayout::SHAPE);
    let regions = names[1..]
        .iter()
        .map(|n| open(n, SocLayout::SHAPE))
        .collect();
    let core = numaproc::SessionCore::attach(global, regions, *engine.core().settings()).unwrap();
    assert_eq!(core.soc_count(), 2);
    assert_eq!(core.input_capacity(), engine.input_capacity());
    assert_eq!(core.procedures().len(), engine.procedures().len());
    for p in engine.procedures() {
        assert_eq!(core.proc_id(&p.name).unwrap(), p.id, "{}", p.name);
    }
    for soc in 0..2 {
        let t = numaproc::Target::Worker { soc, worker: 0 };
        assert_eq!(
            core.call_on(t, "sys_echo", b"attached").unwrap(),
            b"attached"
        );
        assert_eq!(core.call_on(t, "example.reverse", b"abc").unwrap(), b"cba");
        let out = core.call_on(t, "test.reverse", b"ab").unwrap();
        assert_eq!(&out[..2], b"ba");
    }
    // The engine's own callers and the attached core share the workers.
    let held = engine
        .claim(numaproc::Target::Worker { soc: 0, worker: 0 })
        .unwrap();
    assert_eq!(
        core.try_claim(numaproc::Target::Worker { soc: 0, worker: 0 })
            .unwrap_err(),
        numaproc::CallError::Busy
    );
    drop(held);
    assert!(
        core.try_claim(numaproc::Target::Worker { soc: 0, worker: 0 })
            .is_ok()
    );
    drop(core);
    engine.shutdown().unwrap();
    assert_nothing_left("t_attach_emulated", &[]).unwrap();
}

/// A start whose shared memory would not fit in /dev/shm is refused before
/// any object is created (its workers would die of SIGBUS on first touch
/// of their buffers): `NoSpace`, with what it needs (at least every
/// worker's buffers) and what /dev/shm has free. The SOCs are spawned from
/// `/bin/false`: should the check let the start through, it fails there,
/// before anything touches the memory.
#[test]
fn a_start_needing_more_than_dev_shm_has_free_is_refused() {
    use numaproc::{MAX_BUFFER, MemoryError, StartError};
    let _w = Watchdog::new("no_space", Duration::from_secs(60));
    let st = nix::sys::statvfs::statvfs("/dev/shm").unwrap();
    let (free, size) = (
        st.blocks_available() as u128 * st.fragment_size() as u128,
        st.blocks() as u128 * st.fragment_size() as u128,
    );
    // Each worker's input and output buffers, at their largest.
    let per_worker = 2 * MAX_BUFFER as u128;
    let workers = usize::try_from(free / per_worker + 1).unwrap();
    let socs = workers.div_ceil(256);
    let per_soc = workers.div_ceil(socs);
    let prefix = "t_nospace";
    let e = numaproc::Engine::start(
        numaproc::EngineOptions::new()
            .soc_kind(SocKind::Spawned)
            .soc_executable("/bin/false")
            .name_prefix(prefix)
            .synthetic_topology(format!("node:{socs} core:1 pu:1"))
            .socs(socs)
            .workers_per_soc(per_soc)
            .input_capacity(MAX_BUFFER)
            .output_capacity(MAX_BUFFER),
    )
    .unwrap_err();
    match e {
        StartError::SharedMemory(MemoryError::NoSpace {
            needed,
            free: said,
            dir,
        }) => {
            assert_eq!(dir, "/dev/shm");
            assert!(
                needed >= per_worker * (socs * per_soc) as u128,
                "{needed} bytes needed for {} workers",
                socs * per_soc
            );
            assert!(
                needed > said && said <= size,
                "{needed} > {said} free of {size}"
            );
        }
        other => panic!("not NoSpace: {other}"),
    }
    assert_nothing_left(prefix, &[]).unwrap();
}
