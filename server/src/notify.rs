//! Single-threaded wake-ups between tasks on one core: no atomics, no locks,
//! since everything here lives and dies on its core's thread.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::task::{Poll, Waker};

/// Wakes one waiting task; a notification sent while nobody waits is kept
/// until the next wait (so none is lost between checks).
#[derive(Default)]
pub struct Notify {
    pending: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Notify {
    /// Marks the notify and wakes its waiter, if any.
    pub fn notify(&self) {
        self.pending.set(true);
        if let Some(waker) = self.waker.borrow_mut().take() {
            waker.wake();
        }
    }

    /// Waits for the next notification (or takes a kept one at once).
    pub async fn wait(&self) {
        poll_fn(|cx| {
            if self.pending.replace(false) {
                Poll::Ready(())
            } else {
                *self.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}

/// A one-way flag many tasks can wait for.
#[derive(Default)]
pub struct Event {
    set: Cell<bool>,
    waiters: RefCell<Vec<Waker>>,
}

impl Event {
    /// Sets the flag and wakes every waiter.
    pub fn set(&self) {
        self.set.set(true);
        for waker in self.waiters.borrow_mut().drain(..) {
            waker.wake();
        }
    }

    /// Whether the flag is set.
    pub fn is_set(&self) -> bool {
        self.set.get()
    }

    /// Waits until the flag is set.
    pub async fn wait(&self) {
        poll_fn(|cx| {
            if self.set.get() {
                Poll::Ready(())
            } else {
                self.waiters.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}

/// A counting semaphore for one core: at most `n` holders at once, the others
/// wait in turn. Not for futures that may be dropped while waiting: a waiter
/// woken and then dropped leaves its slot free but wakes nobody else until
/// the next release (the server never drops one).
pub struct Slots {
    free: Cell<usize>,
    waiters: RefCell<std::collections::VecDeque<Waker>>,
}

/// One held slot; dropping it frees the slot and wakes the next waiter.
pub struct SlotGuard<'a>(&'a Slots);

impl Slots {
    /// `n` slots, all free.
    pub fn new(n: usize) -> Self {
        Self {
            free: Cell::new(n),
            waiters: RefCell::new(std::collections::VecDeque::new()),
        }
    }

    /// Waits for a free slot and holds it until the guard drops.
    pub async fn acquire(&self) -> SlotGuard<'_> {
        poll_fn(|cx| {
            let free = self.free.get();
            if free > 0 {
                self.free.set(free - 1);
                Poll::Ready(())
            } else {
                self.waiters.borrow_mut().push_back(cx.waker().clone());
                Poll::Pending
            }
        })
        .await;
        SlotGuard(self)
    }
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        self.0.free.set(self.0.free.get() + 1);
        let next = self.0.waiters.borrow_mut().pop_front();
        if let Some(waker) = next {
            waker.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    #[monoio::test_all(timer_enabled = true)]
    async fn slots_admit_n_holders_and_the_rest_in_turn() {
        let slots = Rc::new(Slots::new(2));
        let order = Rc::new(RefCell::new(Vec::new()));
        let gate = Rc::new(Event::default());
        let mut tasks = Vec::new();
        for i in 0..5 {
            let (slots, order, gate) = (slots.clone(), order.clone(), gate.clone());
            tasks.push(monoio::spawn(async move {
                let _slot = slots.acquire().await;
                order.borrow_mut().push(i);
                gate.wait().await;
            }));
        }
        monoio::time::sleep(std::time::Duration::from_millis(10)).await;
        assert_eq!(order.borrow().len(), 2, "two holders at once, three waiting");
        gate.set();
        for task in tasks {
            task.await;
        }
        assert_eq!(*order.borrow(), vec![0, 1, 2, 3, 4], "the waiters, in turn");
        assert_eq!(slots.free.get(), 2, "every slot returned");
    }
}
