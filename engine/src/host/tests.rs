//! The host against this process's own target: each failed step names itself, a command past
//! its timeout fails and its queue comes back, and a controller the target dropped is brought up
//! again by the queue's reconnect.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::queue::HostIoError;
use super::sync::rw_sqe;
use super::*;
use crate::bdev::error::{self as ebdev, Action, Fault, IoTypes};
use crate::bdev::malloc::{self, MallocOpts};
use crate::mem::{DmaBuf, Sgl};
use crate::nvme::{io, Status};
use crate::nvmf::{target, test_target};
use crate::reactor::sim::Sim;

fn unique(tag: &str) -> String {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    format!(
        "host{tag}{}x{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

/// A RAM disk exported by the local target, optionally under an error bdev: (nqn, port, top).
fn exported(with_error_bdev: bool) -> (String, u16, String) {
    let name = unique("disk");
    malloc::create(MallocOpts {
        name: name.clone(),
        num_blocks: 1024,
        block_size: 512,
        uuid: 0,
    })
    .unwrap();
    let top = if with_error_bdev {
        ebdev::create(ebdev::ErrorOpts {
            name: None,
            base: name.clone(),
            uuid: 0,
        })
        .unwrap()
        .name()
        .to_owned()
    } else {
        name
    };
    let nqn = format!("nqn.2016-06.io.tandem:{}", unique("sub"));
    let port = test_target::export(&nqn, &top);
    (nqn, port, top)
}

type Outcome = Rc<RefCell<Option<HostDone>>>;

fn submit(q: &IoQueue, opcode: u8, lba: u64, data: &[u8]) -> Outcome {
    let mut b = DmaBuf::new(data.len()).unwrap();
    b.as_mut_slice().copy_from_slice(data);
    let out: Outcome = Rc::new(RefCell::new(None));
    let o = Rc::clone(&out);
    q.submit(
        rw_sqe(opcode, 1, lba, (data.len() / 512) as u32),
        Sgl::single(b),
        move |d| *o.borrow_mut() = Some(d),
    )
    .map_err(|(e, _)| e)
    .unwrap();
    out
}

fn wait(sim: &Sim, out: &Outcome) -> HostDone {
    let t0 = Instant::now();
    while out.borrow().is_none() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "no completion in 10 s"
        );
        sim.poll_round();
    }
    out.borrow_mut().take().unwrap()
}

fn wait_up(sim: &Sim, q: &IoQueue) {
    let t0 = Instant::now();
    while !q.is_up() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the queue did not come back"
        );
        sim.poll_round();
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn each_failed_step_says_which_and_why() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = dead.local_addr().unwrap().port();
    drop(dead);
    let e = Controller::connect(HostOpts::new(
        "127.0.0.1",
        &port.to_string(),
        "nqn.2016-06.io.x:y",
    ))
    .err()
    .unwrap();
    assert!(matches!(e, HostError::Connect { .. }), "{e}");
    assert!(e.to_string().contains("refused"), "{e}");
    assert_eq!(e.errno(), -libc::ECONNREFUSED);

    let (_nqn, port, _) = exported(false);
    let e = Controller::connect(HostOpts::new(
        "127.0.0.1",
        &port.to_string(),
        "nqn.2016-06.io.tandem:no-such-subsystem",
    ))
    .err()
    .unwrap();
    match e {
        HostError::Status { what, status } => {
            assert_eq!(what, "admin queue Connect");
            assert_eq!(status, Status::CONNECT_INVALID_PARAMETERS);
        }
        other => panic!("{other}"),
    }
}

#[test]
fn a_command_past_its_timeout_fails_and_the_queue_comes_back() {
    let (nqn, port, top) = exported(true);
    let mut opts = HostOpts::new("127.0.0.1", &port.to_string(), &nqn);
    opts.io_timeout = Duration::from_millis(300);
    let ctrl = Controller::connect(opts).unwrap();
    let sim = Sim::new(1).unwrap();
    sim.enter(0, || {
        let q = IoQueue::start(ctrl.clone(), ctrl.connect_io(None).unwrap()).unwrap();
        // The target holds every write: no answer comes.
        ebdev::set_fault(&top, Fault::every(Action::Drop, IoTypes::WRITES)).unwrap();
        let held = submit(&q, io::WRITE, 0, &[1; 512]);
        for _ in 0..100 {
            sim.poll_round();
        }
        assert!(held.borrow().is_none());
        sim.advance(Duration::from_millis(500));
        let d = wait(&sim, &held);
        assert_eq!(d.status, Err(HostIoError::TimedOut));
        assert_eq!(d.sgl.len(), 512, "the buffers come back");
        // Down: new commands fail at once, then the queue reconnects.
        ebdev::clear(&top).unwrap();
        wait_up(&sim, &q);
        let w = wait(&sim, &submit(&q, io::WRITE, 8, &[7; 1024]));
        assert_eq!(w.status, Ok(()));
        let r = wait(&sim, &submit(&q, io::READ, 8, &[0; 1024]));
        assert_eq!(r.sgl.to_vec(), vec![7; 1024]);
    });
}

#[test]
fn a_controller_the_target_dropped_is_brought_up_again() {
    let (nqn, port, _) = exported(false);
    let mut opts = HostOpts::new("127.0.0.1", &port.to_string(), &nqn);
    // Reads then end with C2HData's SUCCESS flag: the host completes them without a response.
    opts.disable_sq_flow_control = true;
    let ctrl = Controller::connect(opts).unwrap();
    let first = ctrl.info().cntlid;
    let sim = Sim::new(1).unwrap();
    sim.enter(0, || {
        let q = IoQueue::start(ctrl.clone(), ctrl.connect_io(None).unwrap()).unwrap();
        assert_eq!(
            wait(&sim, &submit(&q, io::WRITE, 0, &[3; 512])).status,
            Ok(())
        );
        // The target ends the controller (as on a keep-alive timeout): every queue closes.
        let sub = target::nvm_subsystem(&nqn).unwrap();
        let ctrls = sub.state().controllers.clone();
        for c in ctrls {
            c.kill();
        }
        let t0 = Instant::now();
        while q.is_up() {
            assert!(t0.elapsed() < Duration::from_secs(10));
            sim.poll_round();
        }
        let down = submit_or_refusal(&q);
        assert_eq!(
            down,
            HostIoError::Disconnected,
            "refused at once while down"
        );
        wait_up(&sim, &q);
        assert_ne!(ctrl.info().cntlid, first, "a new controller");
        let r = wait(&sim, &submit(&q, io::READ, 0, &[0; 512]));
        assert_eq!(r.sgl.to_vec(), vec![3; 512], "the data is still there");
    });
}

fn submit_or_refusal(q: &IoQueue) -> HostIoError {
    let b = DmaBuf::new(512).unwrap();
    q.submit(rw_sqe(io::READ, 1, 0, 1), Sgl::single(b), |_| {})
        .map(|_| panic!("accepted while down"))
        .unwrap_err()
        .0
}

#[test]
fn capacity_exceeded_is_enospc_write_protected_erofs_and_other_statuses_eio() {
    assert_eq!(
        HostIoError::Nvme(Status::CAPACITY_EXCEEDED).errno(),
        -libc::ENOSPC
    );
    // Whatever the Do Not Retry bit says.
    let retryable = Status {
        dnr: false,
        ..Status::CAPACITY_EXCEEDED
    };
    assert_eq!(HostIoError::Nvme(retryable).errno(), -libc::ENOSPC);
    assert_eq!(
        HostIoError::Nvme(Status::NAMESPACE_WRITE_PROTECTED).errno(),
        -libc::EROFS
    );
    for other in [
        Status::WRITE_FAULT,
        Status::INTERNAL_ERROR,
        Status::LBA_OUT_OF_RANGE,
    ] {
        assert_eq!(HostIoError::Nvme(other).errno(), -libc::EIO, "{other:?}");
    }
}
