//! `FnOnce` closures stored inline, without a heap allocation: the value type behind reactor
//! messages and I/O completions, so that neither allocates per operation.
//!
//! A closure of up to [`INLINE_BYTES`] bytes (alignment up to 16) is moved into the value
//! itself; a larger one is boxed and the box stored inline, so everything still works, but
//! data-path code keeps its captures small (an `Rc` and an index, say) to stay allocation-free.
//! [`InlineFnOnce::is_inline`] tells which way a closure went, for tests that check it.

use std::marker::PhantomData;
use std::mem::{align_of, size_of, ManuallyDrop, MaybeUninit};

/// Bytes of closure state stored inline.
pub const INLINE_BYTES: usize = 48;

#[repr(C, align(16))]
struct Storage([MaybeUninit<u8>; INLINE_BYTES]);

/// A `FnOnce(A)` stored inline. Not `Send`; see [`SendFnOnce`].
pub struct InlineFnOnce<A> {
    storage: Storage,
    call: unsafe fn(*mut u8, A),
    drop: unsafe fn(*mut u8),
    inline: bool,
    // Not Send or Sync: the closure may hold Rc's.
    _marker: PhantomData<*const ()>,
}

const fn fits<F>() -> bool {
    size_of::<F>() <= INLINE_BYTES && align_of::<F>() <= align_of::<Storage>()
}

/// # Safety
/// `p` holds an initialised `F` that is read out (moved) exactly once.
unsafe fn call_inline<F: FnOnce(A), A>(p: *mut u8, a: A) {
    // SAFETY: the caller guarantees an initialised F at p, moved out once.
    let f = unsafe { std::ptr::read(p.cast::<F>()) };
    f(a)
}

/// # Safety
/// `p` holds an initialised `F` that is dropped exactly once and not used afterwards.
unsafe fn drop_inline<F>(p: *mut u8) {
    // SAFETY: as the caller guarantees.
    unsafe { std::ptr::drop_in_place(p.cast::<F>()) }
}

impl<A> InlineFnOnce<A> {
    pub fn new<F: FnOnce(A) + 'static>(f: F) -> Self {
        let mut storage = Storage([MaybeUninit::uninit(); INLINE_BYTES]);
        if fits::<F>() {
            // SAFETY: F fits the storage in size and alignment (checked by `fits`); the storage
            // is uninitialised and owned by us; ownership of f moves into it.
            unsafe { std::ptr::write(storage.0.as_mut_ptr().cast::<F>(), f) };
            Self {
                storage,
                call: call_inline::<F, A>,
                drop: drop_inline::<F>,
                inline: true,
                _marker: PhantomData,
            }
        } else {
            let boxed: Box<F> = Box::new(f);
            // SAFETY: a Box<F> is one pointer: it fits the storage in size and alignment.
            unsafe { std::ptr::write(storage.0.as_mut_ptr().cast::<Box<F>>(), boxed) };
            Self {
                storage,
                call: call_inline::<Box<F>, A>,
                drop: drop_inline::<Box<F>>,
                inline: false,
                _marker: PhantomData,
            }
        }
    }

    /// Whether the closure sits in the value (no allocation) rather than in a box.
    pub fn is_inline(&self) -> bool {
        self.inline
    }

    pub fn call(self, a: A) {
        let mut this = ManuallyDrop::new(self);
        let call = this.call;
        // SAFETY: the storage holds the closure written by `new`; ManuallyDrop ensures `drop`
        // will not run on it after `call` moves it out.
        unsafe { call(this.storage.0.as_mut_ptr().cast(), a) }
    }
}

impl<A> Drop for InlineFnOnce<A> {
    fn drop(&mut self) {
        // SAFETY: the closure has not been called (`call` forgets self), so it is still
        // initialised in the storage and dropped here once.
        unsafe { (self.drop)(self.storage.0.as_mut_ptr().cast()) }
    }
}

/// An [`InlineFnOnce`] made only from `Send` closures, and so `Send` itself.
pub struct SendFnOnce<A>(InlineFnOnce<A>);

// SAFETY: every constructor requires the closure to be Send; the wrapper adds no shared state.
unsafe impl<A> Send for SendFnOnce<A> {}

impl<A> SendFnOnce<A> {
    pub fn new<F: FnOnce(A) + Send + 'static>(f: F) -> Self {
        Self(InlineFnOnce::new(f))
    }

    pub fn is_inline(&self) -> bool {
        self.0.is_inline()
    }

    pub fn call(self, a: A) {
        self.0.call(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    #[test]
    fn small_closures_are_inline_large_ones_boxed_both_run_once() {
        let hits = Rc::new(Cell::new(0u32));
        let h = hits.clone();
        let small = InlineFnOnce::new(move |x: u32| h.set(h.get() + x));
        assert!(small.is_inline());
        small.call(2);
        let big_state = [7u64; 16];
        let h = hits.clone();
        let big = InlineFnOnce::new(move |x: u32| h.set(h.get() + x + big_state[15] as u32));
        assert!(!big.is_inline());
        big.call(1);
        assert_eq!(hits.get(), 10);
        assert_eq!(
            Rc::strong_count(&hits),
            1,
            "captures were dropped after the call"
        );
    }

    #[test]
    fn uncalled_closures_drop_their_captures() {
        let token = Rc::new(());
        let t = token.clone();
        let f = InlineFnOnce::new(move |_: ()| drop(t));
        let t2 = token.clone();
        let g = InlineFnOnce::new(move |_: ()| drop((t2, [0u8; 100])));
        assert_eq!(Rc::strong_count(&token), 3);
        drop(f);
        drop(g);
        assert_eq!(Rc::strong_count(&token), 1);
    }

    #[test]
    fn over_aligned_captures_go_to_the_box() {
        #[repr(align(64))]
        struct Wide(u8);
        let w = Wide(3);
        let f = InlineFnOnce::new(move |_: ()| {
            let w = w;
            assert_eq!(w.0, 3)
        });
        assert!(!f.is_inline());
        f.call(());
    }
}
