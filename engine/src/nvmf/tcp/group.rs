//! Readiness of every socket one reactor serves (listeners and connections), learnt with one
//! `epoll_wait` with a zero timeout per reactor loop, so that a loop costs one system call
//! however many sockets are idle, and a socket is read only when it has something to read.
//!
//! Each socket joins with its fd and gets a flag; the group's poller (registered before any
//! socket's, so it runs first in each loop) raises the flags of the sockets that are readable,
//! and a socket lowers its own flag when a read finds nothing. Level-triggered: a socket that
//! stops reading with bytes still waiting is reported again.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::os::fd::RawFd;
use std::rc::Rc;

use crate::reactor::{self, PollStatus, ReactorLocal};
use crate::sys::Epoll;

/// Events taken per `epoll_wait`.
const EVENTS: usize = 64;

struct Group {
    epoll: Epoll,
    flags: RefCell<HashMap<u64, Rc<Cell<bool>>>>,
    next: Cell<u64>,
    events: RefCell<Vec<libc::epoll_event>>,
}

static GROUP: ReactorLocal<RefCell<Option<Rc<Group>>>> = ReactorLocal::new(|| RefCell::new(None));

/// A socket's membership: its readiness flag, and leaving on drop.
pub(crate) struct Member {
    group: Option<Rc<Group>>,
    fd: RawFd,
    token: u64,
    ready: Rc<Cell<bool>>,
}

impl Member {
    /// Something may be waiting to be read.
    pub(crate) fn readable(&self) -> bool {
        self.ready.get()
    }

    /// A read found nothing: wait for the group to see more.
    pub(crate) fn drained(&self) {
        self.ready.set(false);
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        if let Some(g) = &self.group {
            let _ = g.epoll.remove(self.fd);
            g.flags.borrow_mut().remove(&self.token);
        }
    }
}

fn group() -> Option<Rc<Group>> {
    GROUP
        .with(|g| {
            if let Some(g) = g.borrow().as_ref() {
                return Some(Rc::clone(g));
            }
            let made = Rc::new(Group {
                epoll: Epoll::new().ok()?,
                flags: RefCell::new(HashMap::new()),
                next: Cell::new(1),
                events: RefCell::new(vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS]),
            });
            let polled = Rc::clone(&made);
            reactor::register_poller("nvmf_tcp_sock_group", move || polled.poll()).ok()?;
            *g.borrow_mut() = Some(Rc::clone(&made));
            Some(made)
        })
        .ok()
        .flatten()
}

/// Join this reactor's group. Without one (no reactor, no epoll) the flag stays raised: the
/// socket is then simply read on every poll.
pub(crate) fn join(fd: RawFd) -> Member {
    let ready = Rc::new(Cell::new(true));
    let Some(g) = group() else {
        return Member {
            group: None,
            fd,
            token: 0,
            ready,
        };
    };
    let token = g.next.get();
    g.next.set(token + 1);
    if g.epoll.add(fd, token).is_err() {
        return Member {
            group: None,
            fd,
            token,
            ready,
        };
    }
    g.flags.borrow_mut().insert(token, Rc::clone(&ready));
    Member {
        group: Some(g),
        fd,
        token,
        ready,
    }
}

impl Group {
    fn poll(&self) -> PollStatus {
        if self.flags.borrow().is_empty() {
            return PollStatus::Idle;
        }
        let mut events = self.events.borrow_mut();
        let n = self.epoll.wait(&mut events, 0).unwrap_or(0);
        let flags = self.flags.borrow();
        for ev in &events[..n] {
            let token = ev.u64;
            if let Some(f) = flags.get(&token) {
                f.set(true);
            }
        }
        if n > 0 {
            PollStatus::Busy
        } else {
            PollStatus::Idle
        }
    }
}
