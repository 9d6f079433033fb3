//! Per-reactor local state: a value of type `T` for each reactor, made on first use there and
//! reached without a lock by code running on that reactor (I/O channels live here).
//!
//! Declared like a `thread_local!`, but keyed by reactor rather than OS thread, so that the
//! simulated reactors of `reactor::sim`, which share one OS thread, each get their own.
//!
//! ```
//! use std::cell::Cell;
//! use tandem::reactor::ReactorLocal;
//! static COUNTER: ReactorLocal<Cell<u64>> = ReactorLocal::new(|| Cell::new(0));
//! // On a reactor: COUNTER.with(|c| c.set(c.get() + 1))
//! ```

use std::any::Any;
use std::marker::PhantomData;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{with_current, Result};

static NEXT_INDEX: AtomicUsize = AtomicUsize::new(0);
const UNASSIGNED: usize = usize::MAX;

pub struct ReactorLocal<T: 'static> {
    index: AtomicUsize,
    init: fn() -> T,
    _marker: PhantomData<fn() -> T>,
}

impl<T: 'static> ReactorLocal<T> {
    pub const fn new(init: fn() -> T) -> Self {
        Self {
            index: AtomicUsize::new(UNASSIGNED),
            init,
            _marker: PhantomData,
        }
    }

    fn index(&self) -> usize {
        let current = self.index.load(Ordering::Acquire);
        if current != UNASSIGNED {
            return current;
        }
        let fresh = NEXT_INDEX.fetch_add(1, Ordering::Relaxed);
        match self
            .index
            .compare_exchange(UNASSIGNED, fresh, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => fresh,
            Err(won) => won,
        }
    }

    /// Run `f` with this reactor's value, making it first if needed.
    /// Fails with `NotOnReactor` off a reactor.
    pub fn with<R>(&'static self, f: impl FnOnce(&T) -> R) -> Result<R> {
        let index = self.index();
        let value: Rc<dyn Any> = with_current(|r| r.local_slot(index, &|| Rc::new((self.init)())))?;
        let value = value
            .downcast_ref::<T>()
            .expect("a ReactorLocal index holds one type");
        Ok(f(value))
    }
}
