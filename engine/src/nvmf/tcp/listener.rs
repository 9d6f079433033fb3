//! Listening sockets. Each is polled by the engine's first reactor, which accepts connections
//! and hands them out round-robin over all reactors; a connection then stays on its reactor.
//! The socket is registered for wake-ups, so an adaptive reactor parked idle still accepts.

use std::cell::Cell;
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::nvmf::target::ListenerCtl;
use crate::nvmf::{Error, ListenAddr};
use crate::reactor::{self, Messenger, PollStatus};

/// Connections accepted per poll, so that a burst cannot starve the reactor's other work.
const ACCEPT_BUDGET: usize = 16;

/// Start polling `socket` on the engine's first reactor.
pub(crate) fn start(
    messenger: &Messenger,
    socket: TcpListener,
    addr: ListenAddr,
    ctl: Arc<ListenerCtl>,
) -> Result<(), Error> {
    let first = *messenger.reactors().first().ok_or(Error::NoEngine)?;
    messenger
        .send(first, move || run(socket, addr, ctl))
        .map_err(|_| Error::NoEngine)
}

fn run(socket: TcpListener, addr: ListenAddr, ctl: Arc<ListenerCtl>) {
    let fd = socket.as_raw_fd();
    if let Err(e) = reactor::register_fd(fd) {
        tracing::error!(%addr, "listener: cannot register for wake-ups: {e}");
    }
    let next = Cell::new(0usize);
    let ready = super::group::join(fd);
    let mut socket = Some(socket);
    let shown = addr.to_string();
    let registered = reactor::register_poller("nvmf_tcp_listen", move || {
        let Some(s) = socket.as_ref() else {
            return PollStatus::Idle;
        };
        if ctl.stop.load(Ordering::Acquire) {
            let _ = reactor::unregister_fd(fd);
            socket = None;
            if let Some(me) = reactor::this_poller() {
                let _ = me.unregister();
            }
            ctl.set_closed();
            return PollStatus::Busy;
        }
        if !ready.readable() {
            return PollStatus::Idle;
        }
        accept(s, &addr, &next, &ready)
    });
    if let Err(e) = registered {
        tracing::error!("listener: cannot register its poller: {e}");
    } else {
        tracing::info!("listening on {shown}");
    }
}

fn accept(
    socket: &TcpListener,
    addr: &ListenAddr,
    next: &Cell<usize>,
    ready: &super::group::Member,
) -> PollStatus {
    let mut status = PollStatus::Idle;
    for _ in 0..ACCEPT_BUDGET {
        let stream = match socket.accept() {
            Ok((stream, _)) => stream,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                ready.drained();
                break;
            }
            Err(e) => {
                tracing::warn!(%addr, "accept: {e}");
                break;
            }
        };
        status = PollStatus::Busy;
        let reactors = reactor::reactors().unwrap_or_default();
        if reactors.is_empty() {
            return status;
        }
        let to = reactors[next.get() % reactors.len()];
        next.set(next.get().wrapping_add(1));
        let addr = addr.clone();
        if reactor::send(to, move || super::conn::start(stream, addr)).is_err() {
            tracing::warn!(reactor = to.0, "accept: reactor refused the connection");
        }
    }
    status
}
