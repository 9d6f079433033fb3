//! For tests: this process's own NVMe/TCP target, served by an engine of one adaptive reactor
//! for the rest of the process, and a way to export a bdev through it.

use std::sync::OnceLock;

use super::{target, ListenAddr, SubsystemOpts};
use crate::reactor::{available_cores, CoreMask, Engine, EngineOpts, Messenger, Mode, ReactorId};

/// The target's engine, started on first use: its port, a messenger, and its reactor.
fn served() -> &'static (u16, Messenger, ReactorId) {
    static SERVED: OnceLock<(u16, Messenger, ReactorId)> = OnceLock::new();
    SERVED.get_or_init(|| {
        let engine = Engine::start(EngineOpts {
            core_mask: Some(CoreMask::from_cores([available_cores()[0]]).unwrap()),
            mode: Mode::Adaptive,
            ..EngineOpts::default()
        })
        .unwrap();
        target::attach(engine.messenger());
        let _ = target::create_transport(Default::default());
        let served = (
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .unwrap()
                .port(),
            engine.messenger(),
            engine.reactor_ids()[0],
        );
        // The engine serves for the rest of the process.
        std::mem::forget(engine);
        served
    })
}

/// The port every test subsystem listens on.
pub fn port() -> u16 {
    served().0
}

/// The reactor that serves the target's connections, and a messenger to reach it.
pub fn reactor() -> (Messenger, ReactorId) {
    let (_, m, r) = served();
    (m.clone(), *r)
}

/// Export bdev `bdev` as namespace 1 of a new subsystem `nqn` (any host): the port.
pub fn export(nqn: &str, bdev: &str) -> u16 {
    let port = port();
    let sub = target::create_subsystem(SubsystemOpts {
        nqn: nqn.to_owned(),
        serial: "TEST".into(),
        model: "Tandem test".into(),
        allow_any_host: true,
        max_namespaces: 4,
        min_cntlid: 1,
        max_cntlid: 0xFFEF,
    })
    .unwrap();
    sub.add_namespace(bdev, 1, None, None).unwrap();
    target::add_listener(
        &sub,
        ListenAddr {
            trtype: "TCP".into(),
            adrfam: "IPv4".into(),
            traddr: "127.0.0.1".into(),
            trsvcid: port.to_string(),
        },
    )
    .unwrap();
    port
}
