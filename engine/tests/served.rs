//! A server embedded in an application: the application's own threads and
//! clients share the workers, and a client that goes away gives back only
//! its own claims.

use std::time::{Duration, Instant};

use numaproc::{
    CallError, Client, ClientOptions, Engine, EngineOptions, Server, ServerOptions, SocKind, Target,
};

fn runtime_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("np-served-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn serve(tag: &str, workers: usize) -> (Server, ClientOptions, std::path::PathBuf) {
    let dir = runtime_dir(tag);
    let engine = Engine::start(
        EngineOptions::new()
            .soc_kind(SocKind::Emulated)
            .socs(1)
            .workers_per_soc(workers)
            .name_prefix(format!("served{tag}")),
    )
    .expect("start");
    let server = Server::start(
        engine,
        &ServerOptions::new(tag)
            .dir(&dir)
            .state_dir(dir.join("state")),
    )
    .expect("serve");
    let options = ClientOptions::new()
        .dir(&dir)
        .claim_timeout(Duration::from_secs(20))
        .call_timeout(Duration::from_secs(20));
    (server, options, dir)
}

#[test]
fn the_applications_threads_and_clients_share_the_workers() {
    let (server, options, dir) = serve("share", 2);
    let clients: Vec<Client> = (0..2)
        .map(|_| Client::connect_with("share", &options).expect("connect"))
        .collect();
    assert_ne!(clients[0].holder(), clients[1].holder());
    const EACH: usize = 500;
    std::thread::scope(|s| {
        let engine = server.engine();
        let mut callers = Vec::new();
        for t in 0..2 {
            callers.push(s.spawn(move || {
                for i in 0..EACH {
                    let input = format!("engine {t} {i}");
                    assert_eq!(
                        engine.call("sys_echo", input.as_bytes()).unwrap(),
                        input.as_bytes()
                    );
                }
            }));
        }
        for (c, client) in clients.iter().enumerate() {
            callers.push(s.spawn(move || {
                for i in 0..EACH {
                    let input = format!("client {c} {i}");
                    assert_eq!(
                        client.call("sys_echo", input.as_bytes()).unwrap(),
                        input.as_bytes()
                    );
                }
            }));
        }
        for c in callers {
            c.join().expect("a caller");
        }
    });
    let calls: u64 = server.engine().socs().iter().map(|s| s.calls).sum();
    assert_eq!(calls, 4 * EACH as u64);
    drop(clients);
    server.shutdown().expect("a clean stop");
    assert!(
        std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0) == 0,
        "the runtime directory is left empty"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_client_that_goes_away_gives_back_only_its_own_claims() {
    let (server, options, dir) = serve("mine", 2);
    let engine = server.engine();
    // The application holds worker 0; a client holds worker 1.
    let own = engine
        .claim(Target::Worker { soc: 0, worker: 0 })
        .expect("the application's claim");
    let client = Client::connect_with("mine", &options).expect("connect");
    let theirs = client
        .claim(Target::Worker { soc: 0, worker: 1 })
        .expect("the client's claim");
    std::mem::forget(theirs); // as if its process died holding it
    // The client's connection goes: the server gives up its claim, and
    // only its claim.
    drop(client);
    let deadline = Instant::now() + Duration::from_secs(10);
    let back = loop {
        match engine.try_claim(Target::Worker { soc: 0, worker: 1 }) {
            Ok(c) => break c,
            Err(CallError::Busy) => {
                assert!(
                    Instant::now() < deadline,
                    "the client's claim was never given up"
                );
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert!(matches!(
        engine.try_claim(Target::Worker { soc: 0, worker: 0 }),
        Err(CallError::Busy)
    ));
    let mut session = own
        .submit("sys_echo", 0)
        .expect("the application's claim still holds");
    assert_eq!(session.wait().unwrap(), b"");
    drop((session, back));
    server.shutdown().expect("a clean stop");
    let _ = std::fs::remove_dir_all(&dir);
}
