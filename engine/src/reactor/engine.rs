//! The engine: reactor threads spawned one per core of a core mask and pinned there, plus any
//! number of bring-your-own-thread reactors that embedding firmware polls itself.

use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::clock::Clock;
use super::core_mask::CoreMask;
use super::mailbox::{Mailbox, Msg, SendError};
use super::registry::Registry;
use super::thread::{Mode, Reactor};
use super::{Error, ReactorId, Result};

/// How to start an engine. `Default` gives no spawned reactors, adaptive mode.
#[derive(Debug, Clone)]
pub struct EngineOpts {
    /// One reactor thread is spawned and pinned per core; `None` spawns none (every reactor
    /// is then a bring-your-own thread).
    pub core_mask: Option<CoreMask>,
    pub mode: Mode,
    /// Idle time after which an adaptive reactor parks.
    pub adaptive_spin: Duration,
    /// Messages each reactor's ring holds before senders get `Full`.
    pub ring_capacity: usize,
    /// Pin spawned threads to their cores (on by default; off only for tests of the rest).
    pub pin: bool,
}

impl Default for EngineOpts {
    fn default() -> Self {
        Self {
            core_mask: None,
            mode: Mode::Adaptive,
            adaptive_spin: Duration::from_micros(20),
            ring_capacity: 16 * 1024,
            pin: true,
        }
    }
}

/// Sends messages to any reactor of one engine, from any thread. Cheap to clone.
#[derive(Clone)]
pub struct Messenger {
    registry: Arc<Registry>,
}

impl Messenger {
    pub(crate) fn from_registry(registry: Arc<Registry>) -> Self {
        Self { registry }
    }

    /// Queue `f` to run on reactor `to`. A full ring or a stopped reactor hands it back.
    pub fn send(
        &self,
        to: ReactorId,
        f: impl FnOnce() + Send + 'static,
    ) -> std::result::Result<(), SendError> {
        self.registry.send(to, Msg::new(f))
    }

    /// [`Self::send`] for a message already boxed (one a `SendError` handed back).
    pub fn send_msg(&self, to: ReactorId, msg: Msg) -> std::result::Result<(), SendError> {
        self.registry.send(to, msg)
    }

    /// Queue `f` on reactor `to`, waiting while its ring is full (yielding the thread, up to
    /// 10 000 times): for control messages that must not be lost. A stopped reactor still
    /// refuses at once.
    pub fn send_patiently(
        &self,
        to: ReactorId,
        f: impl FnOnce() + Send + 'static,
    ) -> std::result::Result<(), SendError> {
        let mut msg = Msg::new(f);
        for _ in 0..10_000 {
            match self.registry.send(to, msg) {
                Err(e) if e.kind == super::SendErrorKind::Full => {
                    msg = e.into_msg();
                    std::thread::yield_now();
                }
                other => return other,
            }
        }
        self.registry.send(to, msg)
    }

    /// Ids of the reactors alive now.
    pub fn reactors(&self) -> Vec<ReactorId> {
        self.registry.live()
    }
}

struct Spawned {
    id: ReactorId,
    core: usize,
    mailbox: Arc<Mailbox>,
    join: JoinHandle<Result<()>>,
}

pub struct Engine {
    registry: Arc<Registry>,
    opts: EngineOpts,
    spawned: Vec<Spawned>,
}

impl Engine {
    /// Start the engine: spawn, pin and start one reactor per core of the mask. Returns once
    /// every reactor runs its loop. Reactor ids are given in core order from 0.
    pub fn start(opts: EngineOpts) -> Result<Engine> {
        if let Some(mask) = &opts.core_mask {
            mask.check_present()?;
        }
        let registry = Registry::new(opts.ring_capacity);
        let mut engine = Engine {
            registry,
            opts: opts.clone(),
            spawned: Vec::new(),
        };
        let cores = opts
            .core_mask
            .as_ref()
            .map_or(&[][..], |m| m.cores())
            .to_vec();
        for core in cores {
            let mailbox = engine.registry.add()?;
            let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
            let registry = Arc::clone(&engine.registry);
            let thread_mailbox = Arc::clone(&mailbox);
            let (mode, spin, pin) = (opts.mode, opts.adaptive_spin, opts.pin);
            let id = mailbox.id;
            let join = std::thread::Builder::new()
                .name(format!("reactor_{}", id.0))
                .spawn(move || -> Result<()> {
                    if pin && !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
                        let _ = ready_tx.send(Err(Error::Pin { core }));
                        return Err(Error::Pin { core });
                    }
                    let reactor = match Reactor::new(
                        registry,
                        thread_mailbox,
                        format!("reactor_{}", id.0),
                        Clock::Monotonic,
                    ) {
                        Ok(r) => r,
                        Err(e) => {
                            let _ = ready_tx
                                .send(Err(Error::Spawn(std::io::Error::other(e.to_string()))));
                            return Err(e);
                        }
                    };
                    tracing::debug!(reactor = id.0, core, ?mode, "reactor started");
                    let _ = ready_tx.send(Ok(()));
                    let result = reactor.run(mode, spin);
                    if let Err(e) = &result {
                        tracing::error!(reactor = id.0, "reactor loop failed: {e}");
                    }
                    reactor.shutdown();
                    tracing::debug!(reactor = id.0, "reactor stopped");
                    result
                })
                .map_err(Error::Spawn)?;
            let started = ready_rx
                .recv()
                .unwrap_or_else(|_| Err(Error::Spawn(std::io::Error::other("reactor died"))));
            engine.spawned.push(Spawned {
                id,
                core,
                mailbox,
                join,
            });
            started?;
        }
        Ok(engine)
    }

    /// Ids of the spawned reactors, in core order.
    pub fn reactor_ids(&self) -> Vec<ReactorId> {
        self.spawned.iter().map(|s| s.id).collect()
    }

    /// (reactor id, core) of each spawned reactor.
    pub fn reactor_cores(&self) -> Vec<(ReactorId, usize)> {
        self.spawned.iter().map(|s| (s.id, s.core)).collect()
    }

    pub fn mode(&self) -> Mode {
        self.opts.mode
    }

    pub fn messenger(&self) -> Messenger {
        Messenger {
            registry: Arc::clone(&self.registry),
        }
    }

    /// Queue `f` to run on reactor `to`.
    pub fn send(
        &self,
        to: ReactorId,
        f: impl FnOnce() + Send + 'static,
    ) -> std::result::Result<(), SendError> {
        self.registry.send(to, Msg::new(f))
    }

    /// Make a bring-your-own-thread reactor: nothing is spawned; the calling thread owns it
    /// (a `Reactor` is not `Send`) and calls `poll()` from its own loop.
    pub fn create_thread(&self, name: &str) -> Result<Reactor> {
        let mailbox = self.registry.add()?;
        Reactor::new(
            Arc::clone(&self.registry),
            mailbox,
            name.to_owned(),
            Clock::Monotonic,
        )
    }

    /// Stop every spawned reactor: each runs the messages already queued, then exits. Messages
    /// sent afterwards come back to their senders as `Closed`.
    pub fn stop(mut self) -> Result<()> {
        self.stop_spawned()
    }

    fn stop_spawned(&mut self) -> Result<()> {
        for s in &self.spawned {
            s.mailbox.request_stop();
        }
        let mut first_err = None;
        for s in self.spawned.drain(..) {
            let outcome = s
                .join
                .join()
                .unwrap_or(Err(Error::Panicked { reactor: s.id }));
            if let Err(e) = outcome {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.stop_spawned();
    }
}
