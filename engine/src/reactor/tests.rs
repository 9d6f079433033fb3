use std::cell::{Cell, RefCell};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use super::sim::{Sim, SimRng};
use super::*;
use crate::sys::EventFd;

fn engine(cores: &[usize], mode: Mode) -> Engine {
    let available = available_cores();
    let cores: Vec<usize> = cores
        .iter()
        .map(|c| available[c % available.len()])
        .collect();
    Engine::start(EngineOpts {
        core_mask: Some(CoreMask::from_cores(cores).unwrap()),
        mode,
        ..EngineOpts::default()
    })
    .unwrap()
}

/// Send, retrying while the ring is full (the sender's choice: the ring never blocks).
fn send_retry(m: &Messenger, to: ReactorId, f: impl FnOnce() + Send + 'static) {
    send_msg_retry(m, to, Msg::new(f))
}

fn send_msg_retry(m: &Messenger, to: ReactorId, mut msg: Msg) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match m.send_msg(to, msg) {
            Ok(()) => return,
            Err(e) if e.kind == SendErrorKind::Full && Instant::now() < deadline => {
                msg = e.into_msg();
                std::thread::yield_now();
            }
            Err(e) => panic!("send failed: {e}"),
        }
    }
}

/// Run `f` on reactor `to` and wait for its result.
fn call<R: Send + 'static>(
    m: &Messenger,
    to: ReactorId,
    f: impl FnOnce() -> R + Send + 'static,
) -> R {
    let (tx, rx) = mpsc::channel();
    send_retry(m, to, move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("reactor answered")
}

static SEEN: ReactorLocal<RefCell<Vec<(usize, usize)>>> =
    ReactorLocal::new(|| RefCell::new(Vec::new()));

#[test]
fn messages_arrive_exactly_once_in_order_per_sender() {
    const SENDERS: usize = 4;
    const PER_SENDER: usize = 20_000;
    let e = engine(&[0, 1], Mode::Adaptive);
    let [r0, r1] = e.reactor_ids()[..] else {
        panic!()
    };
    let m = e.messenger();
    // Three OS threads and reactor 1 all send to reactor 0 at once.
    let mut threads = Vec::new();
    for sender in 0..SENDERS - 1 {
        let m = m.clone();
        threads.push(std::thread::spawn(move || {
            for seq in 0..PER_SENDER {
                send_retry(&m, r0, move || {
                    SEEN.with(|s| s.borrow_mut().push((sender, seq))).unwrap()
                });
            }
        }));
    }
    let m1 = m.clone();
    call(&m, r1, move || {
        let _ = m1;
        for seq in 0..PER_SENDER {
            let mut msg = Msg::new(move || {
                SEEN.with(|s| s.borrow_mut().push((SENDERS - 1, seq)))
                    .unwrap()
            });
            loop {
                match send_msg(r0, msg) {
                    Ok(()) => break,
                    Err(e) if e.kind == SendErrorKind::Full => msg = e.into_msg(),
                    Err(e) => panic!("{e}"),
                }
            }
        }
    });
    for t in threads {
        t.join().unwrap();
    }
    let seen = call(&m, r0, || SEEN.with(|s| s.borrow().clone()).unwrap());
    assert_eq!(seen.len(), SENDERS * PER_SENDER);
    let mut next = [0usize; SENDERS];
    for (sender, seq) in seen {
        assert_eq!(
            seq, next[sender],
            "sender {sender} out of order or repeated"
        );
        next[sender] += 1;
    }
    e.stop().unwrap();
}

#[test]
fn small_messages_carry_their_closure_inline() {
    let (a, b) = (Arc::new(AtomicUsize::new(0)), 7u64);
    assert!(
        Msg::new(move || drop((a, b))).is_inline(),
        "an Arc and a word need no allocation"
    );
    let big = [0u8; 256];
    assert!(!Msg::new(move || assert_eq!(big.len(), 256)).is_inline());
}

#[test]
fn a_full_ring_hands_the_message_back() {
    let e = Engine::start(EngineOpts {
        core_mask: Some(CoreMask::from_cores([available_cores()[0]]).unwrap()),
        ring_capacity: 4,
        ..EngineOpts::default()
    })
    .unwrap();
    let r0 = e.reactor_ids()[0];
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let (blocked_tx, blocked_rx) = mpsc::channel::<()>();
    e.send(r0, move || {
        blocked_tx.send(()).unwrap();
        release_rx.recv().unwrap();
    })
    .unwrap();
    blocked_rx.recv().unwrap();
    let ran = Arc::new(AtomicUsize::new(0));
    for _ in 0..4 {
        let ran = ran.clone();
        e.send(r0, move || {
            ran.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap();
    }
    let ran2 = ran.clone();
    let err = e
        .send(r0, move || {
            ran2.fetch_add(100, Ordering::SeqCst);
        })
        .unwrap_err();
    assert_eq!(err.kind, SendErrorKind::Full);
    release_tx.send(()).unwrap();
    // The returned message is intact: resend it once there is room.
    let msg = err.into_msg();
    send_msg_retry(&e.messenger(), r0, msg);
    call(&e.messenger(), r0, || ());
    assert_eq!(ran.load(Ordering::SeqCst), 104);
    e.stop().unwrap();
}

#[test]
fn stop_runs_pending_messages_then_refuses_new_ones() {
    let e = engine(&[0], Mode::Adaptive);
    let r0 = e.reactor_ids()[0];
    let m = e.messenger();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let (blocked_tx, blocked_rx) = mpsc::channel::<()>();
    e.send(r0, move || {
        blocked_tx.send(()).unwrap();
        release_rx.recv().unwrap();
    })
    .unwrap();
    blocked_rx.recv().unwrap();
    let ran = Arc::new(AtomicUsize::new(0));
    for _ in 0..1000 {
        let ran = ran.clone();
        send_retry(&m, r0, move || {
            ran.fetch_add(1, Ordering::SeqCst);
        });
    }
    let stopper = std::thread::spawn(move || e.stop());
    std::thread::sleep(Duration::from_millis(20));
    release_tx.send(()).unwrap();
    stopper.join().unwrap().unwrap();
    assert_eq!(
        ran.load(Ordering::SeqCst),
        1000,
        "every pending message ran"
    );
    let err = m.send(r0, || panic!("must not run")).unwrap_err();
    assert_eq!(err.kind, SendErrorKind::Closed);
    assert!(m.reactors().is_empty());
}

#[test]
fn pollers_run_every_loop_and_unregister_from_inside() {
    let sim = Sim::new(1).unwrap();
    let every = Rc::new(Cell::new(0));
    let selfish = Rc::new(Cell::new(0));
    sim.enter(0, || {
        let c = every.clone();
        register_poller("count", move || {
            c.set(c.get() + 1);
            PollStatus::Idle
        })
        .unwrap();
        let c = selfish.clone();
        register_poller("three_then_gone", move || {
            c.set(c.get() + 1);
            if c.get() == 3 {
                this_poller().unwrap().unregister().unwrap();
            }
            PollStatus::Busy
        })
        .unwrap();
    });
    for _ in 0..10 {
        sim.poll(0);
    }
    assert_eq!(every.get(), 10);
    assert_eq!(selfish.get(), 3);
    assert_eq!(sim.enter(0, || poller_names().unwrap()), vec!["count"]);
    // With only an idle poller left, the reactor reports idle.
    assert_eq!(sim.poll(0), PollStatus::Idle);
}

#[test]
fn a_poller_unregistered_from_another_reactor_stops_after_the_message() {
    let sim = Sim::new(2).unwrap();
    let calls = Rc::new(Cell::new(0));
    let c = calls.clone();
    let handle = sim.enter(0, || {
        register_poller("victim", move || {
            c.set(c.get() + 1);
            PollStatus::Idle
        })
        .unwrap()
    });
    sim.poll(0);
    assert_eq!(calls.get(), 1);
    // Reactor 1 asks for the removal: it travels as a message to reactor 0.
    sim.enter(1, || handle.unregister().unwrap());
    // Reactor 0's next iteration runs the message first, then finds the poller gone.
    sim.poll(0);
    sim.poll(0);
    assert_eq!(calls.get(), 1);
}

#[test]
fn periodic_pollers_and_timers_fire_on_the_mock_clock() {
    let sim = Sim::new(1).unwrap();
    let ticks = Rc::new(RefCell::new(Vec::new()));
    let fired = Rc::new(RefCell::new(Vec::new()));
    let t = ticks.clone();
    let f = fired.clone();
    let (f1, f2) = (fired.clone(), fired.clone());
    let cancelled = sim.enter(0, || {
        register_periodic_poller("tick", Duration::from_millis(10), move || {
            t.borrow_mut().push(now().unwrap().as_millis());
            PollStatus::Busy
        })
        .unwrap();
        set_timer(Duration::from_millis(25), move || {
            f.borrow_mut().push(("a", now().unwrap().as_millis()))
        })
        .unwrap();
        set_timer(Duration::from_millis(5), move || {
            f1.borrow_mut().push(("b", now().unwrap().as_millis()))
        })
        .unwrap();
        set_timer(Duration::from_millis(7), move || {
            f2.borrow_mut().push(("c", 0))
        })
        .unwrap()
    });
    sim.enter(0, || cancelled.cancel().unwrap());
    sim.run_until_idle(10).unwrap();
    assert!(ticks.borrow().is_empty() && fired.borrow().is_empty());
    sim.advance(Duration::from_micros(4_999));
    sim.run_until_idle(10).unwrap();
    assert!(fired.borrow().is_empty(), "a timer fired early");
    sim.run_for(Duration::from_millis(40), Duration::from_millis(1))
        .unwrap();
    assert_eq!(*ticks.borrow(), vec![10, 20, 30, 40]);
    assert_eq!(*fired.borrow(), vec![("b", 5), ("a", 25)]);
}

#[test]
fn reactor_locals_are_per_reactor_and_current_tells_which() {
    static COUNT: ReactorLocal<Cell<u32>> = ReactorLocal::new(|| Cell::new(0));
    let sim = Sim::new(2).unwrap();
    assert_eq!(current(), None);
    assert!(matches!(COUNT.with(|_| ()), Err(Error::NotOnReactor)));
    for i in 0..2 {
        for _ in 0..=i {
            sim.enter(i, || COUNT.with(|c| c.set(c.get() + 1)).unwrap());
        }
    }
    assert_eq!(
        sim.enter(0, || (current(), COUNT.with(|c| c.get()).unwrap())),
        (Some(sim.id(0)), 1)
    );
    assert_eq!(
        sim.enter(1, || (current(), COUNT.with(|c| c.get()).unwrap())),
        (Some(sim.id(1)), 2)
    );
}

/// A three-reactor relay: every hop records itself and forwards to a peer chosen by the
/// message's own counter. The order of the trace depends only on the polling schedule.
fn relay_trace(seed: u64) -> Vec<(u32, u32)> {
    let sim = Sim::new(3).unwrap();
    let trace = Arc::new(Mutex::new(Vec::new()));
    fn hop(trace: Arc<Mutex<Vec<(u32, u32)>>>, chain: u32, left: u32) {
        let me = current().unwrap();
        trace.lock().unwrap().push((me.0, chain));
        if left > 0 {
            let next = ReactorId((me.0 + 1 + chain % 2) % 3);
            send(next, move || hop(trace, chain, left - 1)).unwrap();
        }
    }
    for chain in 0..6u32 {
        let t = trace.clone();
        sim.send(sim.id(chain as usize % 3), move || hop(t, chain, 5))
            .unwrap();
    }
    let mut rng = SimRng::new(seed);
    for _ in 0..10_000 {
        sim.step_seeded(&mut rng);
    }
    assert_eq!(sim.poll_round(), PollStatus::Idle, "relay finished");
    let out = trace.lock().unwrap().clone();
    assert_eq!(out.len(), 36);
    out
}

#[test]
fn the_sim_reproduces_an_interleaving_from_its_seed() {
    assert_eq!(relay_trace(7), relay_trace(7));
    assert_eq!(relay_trace(12345), relay_trace(12345));
    let distinct: std::collections::HashSet<_> = (0..8).map(relay_trace).collect();
    assert!(distinct.len() > 1, "the schedule changes the interleaving");
}

#[test]
fn bring_your_own_thread_runs_messages_pollers_and_timers() {
    let e = Engine::start(EngineOpts::default()).unwrap();
    assert!(e.reactor_ids().is_empty());
    let r = e.create_thread("firmware").unwrap();
    let polls = Rc::new(Cell::new(0u32));
    let timer_fired = Rc::new(Cell::new(false));
    let (p, t) = (polls.clone(), timer_fired.clone());
    r.enter(|| {
        register_poller("fw", move || {
            p.set(p.get() + 1);
            PollStatus::Idle
        })
        .unwrap();
        set_timer(Duration::from_millis(5), move || t.set(true)).unwrap();
    });
    let got = Arc::new(AtomicUsize::new(0));
    let (m, id, g) = (e.messenger(), r.id(), got.clone());
    let sender = std::thread::spawn(move || {
        for _ in 0..100 {
            send_retry(&m, id, {
                let g = g.clone();
                move || {
                    assert_eq!(current_name().as_deref(), Some("firmware"));
                    g.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while (got.load(Ordering::SeqCst) < 100 || !timer_fired.get()) && Instant::now() < deadline {
        r.poll();
    }
    sender.join().unwrap();
    assert_eq!(got.load(Ordering::SeqCst), 100);
    assert!(timer_fired.get());
    assert!(polls.get() > 0);
    assert_eq!(current(), None, "poll leaves no current reactor behind");
}

fn parks(m: &Messenger, id: ReactorId) -> u64 {
    call(m, id, || stats().unwrap().parks)
}

#[test]
fn adaptive_reactor_sleeps_and_wakes_on_a_message() {
    let e = engine(&[0], Mode::Adaptive);
    let (r0, m) = (e.reactor_ids()[0], e.messenger());
    let before = parks(&m, r0);
    std::thread::sleep(Duration::from_millis(50));
    let t0 = Instant::now();
    let after = parks(&m, r0);
    assert!(t0.elapsed() < Duration::from_secs(1));
    assert!(
        after > before,
        "the idle reactor parked (before {before}, after {after})"
    );
    e.stop().unwrap();
}

#[test]
fn an_idle_adaptive_reactor_costs_under_two_percent_of_a_core() {
    let e = engine(&[0], Mode::Adaptive);
    let (r0, m) = (e.reactor_ids()[0], e.messenger());
    let cpu0 = call(&m, r0, crate::sys::thread_cpu_time_ns);
    let wall0 = Instant::now();
    std::thread::sleep(Duration::from_millis(1000));
    let cpu1 = call(&m, r0, crate::sys::thread_cpu_time_ns);
    let share = (cpu1 - cpu0) as f64 / wall0.elapsed().as_nanos() as f64;
    assert!(
        share < 0.02,
        "idle reactor used {:.2}% of a core",
        share * 100.0
    );
    e.stop().unwrap();
}

#[test]
fn adaptive_reactor_wakes_for_its_timer() {
    let e = engine(&[1], Mode::Adaptive);
    let (r0, m) = (e.reactor_ids()[0], e.messenger());
    let (tx, rx) = mpsc::channel();
    let set_at = Instant::now();
    call(&m, r0, move || {
        set_timer(Duration::from_millis(30), move || {
            tx.send((Instant::now(), stats().unwrap().parks)).unwrap()
        })
        .unwrap();
    });
    let (fired_at, parks) = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("timer fired");
    let late = fired_at - set_at;
    assert!(late >= Duration::from_millis(30), "fired early: {late:?}");
    assert!(late < Duration::from_millis(500), "fired late: {late:?}");
    assert!(parks > 0, "the reactor slept while waiting");
    e.stop().unwrap();
}

#[test]
fn adaptive_reactor_wakes_when_a_registered_fd_is_readable() {
    let e = engine(&[0], Mode::Adaptive);
    let (r0, m) = (e.reactor_ids()[0], e.messenger());
    let efd = Arc::new(EventFd::new().unwrap());
    let (tx, rx) = mpsc::channel();
    let reader = efd.clone();
    call(&m, r0, move || {
        register_fd(reader.as_raw_fd()).unwrap();
        let reader2 = reader.clone();
        register_poller("fd", move || {
            if reader2.drain() {
                tx.send((Instant::now(), stats().unwrap().parks)).unwrap();
                PollStatus::Busy
            } else {
                PollStatus::Idle
            }
        })
        .unwrap();
    });
    std::thread::sleep(Duration::from_millis(50));
    let parked_before = parks(&m, r0);
    std::thread::sleep(Duration::from_millis(50));
    // No message now: only the fd can wake the reactor.
    let rung = Instant::now();
    efd.notify();
    let (seen_at, parks_then) = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("fd woke the reactor");
    assert!(seen_at - rung < Duration::from_millis(500));
    assert!(
        parks_then > parked_before,
        "it had parked before the fd fired"
    );
    let fd = efd.as_raw_fd();
    call(&m, r0, move || unregister_fd(fd).unwrap());
    e.stop().unwrap();
}

#[test]
fn poll_mode_spins_and_still_runs_everything() {
    let e = engine(&[1], Mode::Poll);
    let (r0, m) = (e.reactor_ids()[0], e.messenger());
    std::thread::sleep(Duration::from_millis(20));
    let s = call(&m, r0, || stats().unwrap());
    assert_eq!(s.parks, 0);
    assert!(s.loops > 1000, "poll mode spins: {} loops", s.loops);
    e.stop().unwrap();
}
