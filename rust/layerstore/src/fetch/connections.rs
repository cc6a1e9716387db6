//! The connection slots of one host, handed out by priority instead of in arrival order.
//!
//! Every blob of every pull that reaches a host shares its slots. A freed slot goes to the
//! waiter with the smallest [`Priority`], and among equal priorities to the one that waited
//! longest. So an earlier pull gets its ranges before a later one. Within a pull, every blob's
//! first request goes before the other ranges, and the other ranges go out blob by blob in the
//! pull's order (largest blob first). The largest blob then completes once its own bytes have
//! arrived instead of at the end of the pull, so its consumer (an unpack) starts on it sooner.
//! The pull takes as long as in any other order, since every slot stays busy while any range
//! waits.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::sync::oneshot;

/// The order in which waiting requests get a connection: smaller first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Priority {
    /// The pull the request belongs to, numbered in the order pulls started.
    pub pull: u64,
    /// False for a blob's first request, whose response shows whether the server honours
    /// ranges, and true for its other ranges.
    pub later: bool,
    /// The blob's place in its pull: the config blob, then the others largest first.
    pub rank: usize,
}

/// The connection slots of one host.
#[derive(Debug)]
pub(crate) struct Connections {
    /// The number of slots, held or free.
    size: usize,
    state: Mutex<Slots>,
}

#[derive(Debug)]
struct Slots {
    free: usize,
    /// Waiters by (priority, arrival); a waiter whose acquire was dropped stays until popped.
    waiting: BinaryHeap<Reverse<Waiter>>,
    arrivals: u64,
}

#[derive(Debug)]
struct Waiter {
    priority: Priority,
    arrival: u64,
    wake: oneshot::Sender<()>,
}

impl PartialEq for Waiter {
    fn eq(&self, other: &Waiter) -> bool {
        (self.priority, self.arrival) == (other.priority, other.arrival)
    }
}

impl Eq for Waiter {}

impl PartialOrd for Waiter {
    fn partial_cmp(&self, other: &Waiter) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Waiter {
    fn cmp(&self, other: &Waiter) -> std::cmp::Ordering {
        (self.priority, self.arrival).cmp(&(other.priority, other.arrival))
    }
}

impl Connections {
    pub(crate) fn new(slots: usize) -> Connections {
        Connections {
            size: slots.max(1),
            state: Mutex::new(Slots {
                free: slots.max(1),
                waiting: BinaryHeap::new(),
                arrivals: 0,
            }),
        }
    }

    pub(crate) fn size(&self) -> usize {
        self.size
    }

    /// Asks for a slot. The request takes its place in the order now, when this is called,
    /// not when the returned future is first polled.
    pub(crate) fn acquire(self: &Arc<Self>, priority: Priority) -> Acquire {
        let mut state = self.state.lock().expect("not poisoned");
        // A freed slot goes straight to a waiter, so no request waits while a slot is free.
        if state.free > 0 {
            state.free -= 1;
            return Acquire {
                connections: Arc::clone(self),
                state: AcquireState::Held,
            };
        }
        let (wake, woken) = oneshot::channel();
        let arrival = state.arrivals;
        state.arrivals += 1;
        state.waiting.push(Reverse(Waiter {
            priority,
            arrival,
            wake,
        }));
        Acquire {
            connections: Arc::clone(self),
            state: AcquireState::Waiting(woken),
        }
    }

    /// Hands a freed slot to the first waiter still waiting, or keeps it free.
    fn release(&self) {
        let mut state = self.state.lock().expect("not poisoned");
        while let Some(Reverse(waiter)) = state.waiting.pop() {
            // Fails only when the waiter's acquire was dropped before this.
            if waiter.wake.send(()).is_ok() {
                return;
            }
        }
        state.free += 1;
    }
}

/// A request for a slot, in the queue from its creation. Dropping it gives up its place, and
/// the slot if one was handed to it meanwhile.
#[derive(Debug)]
pub(crate) struct Acquire {
    connections: Arc<Connections>,
    state: AcquireState,
}

#[derive(Debug)]
enum AcquireState {
    /// Holds a slot that no [`Slot`] owns yet.
    Held,
    /// In the queue until a release sends the wake-up, which carries a slot.
    Waiting(oneshot::Receiver<()>),
    /// The slot went to the returned [`Slot`].
    HandedOn,
}

impl Future for Acquire {
    type Output = Slot;

    fn poll(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Slot> {
        if let AcquireState::Waiting(woken) = &mut self.state {
            match Pin::new(woken).poll(context) {
                Poll::Pending => return Poll::Pending,
                // A release drops a sender unsent only when its acquire was dropped, and this
                // one is being polled.
                Poll::Ready(result) => result.expect("a waiter is woken before it is dropped"),
            }
        } else if matches!(self.state, AcquireState::HandedOn) {
            panic!("an acquire was polled after it returned its slot");
        }
        self.state = AcquireState::HandedOn;
        Poll::Ready(Slot {
            connections: Arc::clone(&self.connections),
        })
    }
}

impl Drop for Acquire {
    fn drop(&mut self) {
        match std::mem::replace(&mut self.state, AcquireState::HandedOn) {
            AcquireState::Held => self.connections.release(),
            AcquireState::Waiting(mut woken) => {
                woken.close();
                // A wake-up sent before the close is a slot this acquire now owns.
                if woken.try_recv().is_ok() {
                    self.connections.release();
                }
            }
            AcquireState::HandedOn => {}
        }
    }
}

/// A held connection slot, given back when dropped.
#[derive(Debug)]
pub(crate) struct Slot {
    connections: Arc<Connections>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.connections.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn priority(pull: u64, later: bool, rank: usize) -> Priority {
        Priority { pull, later, rank }
    }

    #[tokio::test]
    async fn connections_order_by_priority_then_arrival() {
        let connections = Arc::new(Connections::new(1));
        let holder = connections.acquire(priority(0, false, 0)).await;
        let priorities = [
            priority(1, false, 0),
            priority(0, true, 2),
            priority(0, true, 1),
            priority(0, false, 3),
            priority(0, true, 1),
        ];
        let mut waiting: Vec<_> = priorities
            .iter()
            .map(|&priority| Some(connections.acquire(priority)))
            .collect();
        drop(holder);
        let mut order = Vec::new();
        for _ in 0..priorities.len() {
            let mut woken = None;
            for (index, acquire) in waiting.iter_mut().enumerate() {
                let Some(pending) = acquire.as_mut() else {
                    continue;
                };
                if let Poll::Ready(slot) = futures_poll_once(pending) {
                    woken = Some((index, slot));
                    break;
                }
            }
            let (index, slot) = woken.expect("one waiter holds the freed slot");
            waiting[index] = None;
            order.push(index);
            drop(slot);
        }
        assert_eq!(order, vec![3, 2, 4, 1, 0]);
    }

    #[tokio::test]
    async fn connections_pass_on_a_dropped_slot() {
        let connections = Arc::new(Connections::new(1));
        let holder = connections.acquire(priority(0, false, 0)).await;
        let first = connections.acquire(priority(0, false, 1));
        let second = connections.acquire(priority(0, false, 2));
        // Woken, but dropped before it was polled: the slot must move on.
        drop(holder);
        drop(first);
        let slot = tokio::time::timeout(std::time::Duration::from_secs(5), second)
            .await
            .expect("the slot reached the second waiter");
        drop(slot);
        // Dropped while still queued: the slot comes back all the same.
        let holder = connections.acquire(priority(0, false, 0)).await;
        drop(connections.acquire(priority(0, false, 1)));
        drop(holder);
        let _again = connections.acquire(priority(0, false, 0)).await;
        let state = connections.state.lock().expect("not poisoned");
        assert_eq!(state.free, 0);
    }

    #[tokio::test]
    async fn connections_in_use_stay_within_count() {
        let connections = Arc::new(Connections::new(3));
        let in_use = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let max_in_use = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for index in 0..40usize {
            let (connections, in_use, max_in_use) = (
                Arc::clone(&connections),
                Arc::clone(&in_use),
                Arc::clone(&max_in_use),
            );
            tasks.spawn(async move {
                let acquire = connections.acquire(priority(0, index % 2 == 0, index % 5));
                if index % 7 == 0 {
                    // Some give up their place before they get a slot.
                    drop(acquire);
                    return;
                }
                let slot = acquire.await;
                let now = in_use.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                max_in_use.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
                tokio::task::yield_now().await;
                in_use.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                drop(slot);
            });
        }
        while tasks.join_next().await.is_some() {}
        assert!(max_in_use.load(std::sync::atomic::Ordering::SeqCst) <= 3);
        assert_eq!(connections.state.lock().expect("not poisoned").free, 3);
    }

    /// Polls a future once with a waker that does nothing.
    fn futures_poll_once(acquire: &mut Acquire) -> Poll<Slot> {
        let mut context = Context::from_waker(std::task::Waker::noop());
        Pin::new(acquire).poll(&mut context)
    }
}
