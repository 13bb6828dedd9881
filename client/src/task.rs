//! Running a future whose parts wake each other inside one Tokio task.
//!
//! An HTTP/1 exchange driven in one task is two futures that wake each other: the request
//! handle hands the request to the connection's state machine, which hands the response
//! back, each through a channel whose other end is polled by the same task. Such a wake
//! arrives while the task is running, and Tokio's multi-threaded scheduler treats a task
//! woken during its own poll as one that yielded: it goes to the back of the run queue and
//! another worker thread is woken to come and steal it (a futex wake and a context switch,
//! and often the task moving to the other CPU), although the task could simply be polled
//! again. [`inline_self_wakes`] polls again at once instead, so a request and its answer
//! stay on the thread that is already running them.

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicU8, Ordering::AcqRel};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use futures::task::AtomicWaker;

/// Polls again, at most this many times in a row, a future that woke itself; then leaves it
/// to the scheduler, so one task cannot keep its thread from others.
const MAX_INLINE_POLLS: usize = 16;

/// [`WakeFlag::state`]: the future is being polled.
const POLLING: u8 = 1;
/// [`WakeFlag::state`]: the future was woken since its poll began.
const WOKEN: u8 = 2;

/// Runs `future`, polling it again at once (instead of rescheduling the task) when it woke
/// its own task while being polled, as long as Tokio's cooperative budget lasts. Wakes from
/// anywhere else (a socket becoming readable, another task) reach the task as usual.
///
/// A future that yields by waking itself and returning `Pending` is polled again up to
/// [`MAX_INLINE_POLLS`] times before the task yields. `tokio::task::yield_now` and Tokio's
/// own budget still yield at once on a worker thread: Tokio defers those wakes until the
/// task's poll has returned.
pub async fn inline_self_wakes<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let flag = Arc::new(WakeFlag::default());
    let waker = Waker::from(flag.clone());
    std::future::poll_fn(|cx| {
        flag.task.register(cx.waker());
        let mut inner = Context::from_waker(&waker);
        for _ in 0..MAX_INLINE_POLLS {
            // Read-modify-writes of one variable, here and in the waker: each wake is
            // ordered before or after each of these, so it is seen by this loop (WOKEN set
            // while POLLING) or it wakes the task (POLLING clear), never neither.
            flag.state.swap(POLLING, AcqRel);
            let poll = future.as_mut().poll(&mut inner);
            let state = flag.state.swap(0, AcqRel);
            if poll.is_ready() {
                return poll;
            }
            if state & WOKEN == 0 {
                return Poll::Pending;
            }
            // Out of budget, the future's Tokio resources would only answer Pending again.
            if !tokio::task::coop::has_budget_remaining() {
                break;
            }
        }
        // Woken, but polled often enough in a row: let the scheduler decide.
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await
}

/// The waker the future is polled with: records a wake that comes while it is being polled
/// (the poll loop sees it), and passes any other on to the task.
#[derive(Default)]
struct WakeFlag {
    /// [`POLLING`] and [`WOKEN`].
    state: AtomicU8,
    task: AtomicWaker,
}

impl Wake for WakeFlag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.state.fetch_or(WOKEN, AcqRel) & POLLING == 0 {
            self.task.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    //! Each test runs its future in a spawned task on a two-worker runtime, where Tokio's
    //! scheduler (and its deferred wakes) behave as in the node and the client, and counts
    //! how often that task is polled.

    use std::pin::Pin;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::time::Duration;

    use tokio::sync::{mpsc, oneshot};

    use super::*;

    /// Polls of the task running `future` (wrapped in [`inline_self_wakes`] when `inline`),
    /// until it is done.
    async fn task_polls<F>(future: F, inline: bool) -> usize
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let task = Arc::new(AtomicUsize::new(0));
        let counted = task.clone();
        let mut inner: Pin<Box<dyn Future<Output = ()> + Send>> = if inline {
            Box::pin(inline_self_wakes(future))
        } else {
            Box::pin(future)
        };
        let counting = std::future::poll_fn(move |cx| {
            counted.fetch_add(1, SeqCst);
            inner.as_mut().poll(cx)
        });
        tokio::time::timeout(Duration::from_secs(30), tokio::spawn(counting))
            .await
            .expect("the task never finished: a wake was lost")
            .unwrap();
        task.load(SeqCst)
    }

    /// Wakes itself `left` times (returning Pending each time), then is ready.
    struct WakesItself {
        left: usize,
    }

    impl Future for WakesItself {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            if self.left == 0 {
                return Poll::Ready(());
            }
            self.left -= 1;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }

    /// Once: wakes itself from another thread, waiting until that thread has done it, and
    /// returns Pending; then is ready.
    struct WokenFromAnotherThread {
        done: bool,
    }

    impl Future for WokenFromAnotherThread {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            if std::mem::replace(&mut self.done, true) {
                return Poll::Ready(());
            }
            let waker = cx.waker().clone();
            std::thread::spawn(move || waker.wake()).join().unwrap();
            Poll::Pending
        }
    }

    async fn then_a_timer(first: impl Future<Output = ()>) {
        first.await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn wakes_during_the_poll_are_handled_inline_and_never_reach_the_task() {
        // Three self-wakes, then a timer: inline the task is polled twice (the first poll,
        // then the timer's wake). A self-wake that also reached the task would poll it again
        // in between; without the wrapper each one does.
        let self_wakes = || then_a_timer(WakesItself { left: 3 });
        assert_eq!(task_polls(self_wakes(), true).await, 2);
        assert_eq!(task_polls(self_wakes(), false).await, 5);
        // The same for a wake from another thread that lands while the future is polled.
        let foreign = || then_a_timer(WokenFromAnotherThread { done: false });
        assert_eq!(task_polls(foreign(), true).await, 2);
        assert_eq!(task_polls(foreign(), false).await, 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_future_that_keeps_waking_itself_still_yields_its_thread() {
        // More self-wakes than one poll of the task takes inline: the task is polled again
        // by the scheduler, once per MAX_INLINE_POLLS wakes, and the future completes.
        let n = MAX_INLINE_POLLS * 3;
        assert_eq!(task_polls(WakesItself { left: n }, true).await, 4);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tokio_budget_still_makes_the_task_yield() {
        // Each receive spends a unit of the task's budget (128 per poll of the task); out of
        // budget the channel answers Pending, and the task must yield, not spin inline.
        let (tx, mut rx) = mpsc::unbounded_channel::<u32>();
        for i in 0..1_000 {
            tx.send(i).unwrap();
        }
        drop(tx);
        let polls = task_polls(
            async move {
                let mut sum = 0u64;
                while let Some(i) = rx.recv().await {
                    sum += u64::from(i);
                }
                assert_eq!(sum, (0..1_000u64).sum::<u64>());
            },
            true,
        )
        .await;
        assert!(
            polls >= 1_000 / 128,
            "{polls} polls of the task for 1,000 receives"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_wake_from_another_thread_arrives() {
        // Each round completes only through one wake from a long-lived thread, which lands
        // before, during or after the future's poll: a lost wake times the round out.
        let (to_thread, from_test) = std::sync::mpsc::channel::<oneshot::Sender<u32>>();
        let thread = std::thread::spawn(move || {
            for (i, reply) in from_test.into_iter().enumerate() {
                // Vary the moment the wake lands.
                for _ in 0..(i % 7) * 50 {
                    std::hint::spin_loop();
                }
                let _ = reply.send(i as u32);
            }
        });
        let rounds = tokio::spawn(async move {
            for i in 0..20_000u32 {
                let (reply, answer) = oneshot::channel();
                to_thread.send(reply).unwrap();
                let got = tokio::time::timeout(Duration::from_secs(5), inline_self_wakes(answer))
                    .await
                    .unwrap_or_else(|_| panic!("round {i}: the wake was lost"))
                    .unwrap();
                assert_eq!(got, i);
            }
        });
        rounds.await.unwrap();
        thread.join().unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_and_its_answer_within_one_task_complete() {
        // The shape of an HTTP exchange driven in one task: one part sends, the other
        // answers, both polled by the same task, which runs as a spawned task.
        let exchange = tokio::spawn(inline_self_wakes(async {
            let (ask, mut asked) = mpsc::channel::<oneshot::Sender<u32>>(1);
            let server = async move {
                while let Some(reply) = asked.recv().await {
                    let _ = reply.send(42);
                }
            };
            let client = async move {
                let mut total = 0;
                for _ in 0..100 {
                    let (reply, answer) = oneshot::channel();
                    ask.send(reply).await.unwrap();
                    total += answer.await.unwrap();
                }
                total
            };
            tokio::select! {
                total = client => total,
                _ = server => unreachable!("the server ends only when the client has"),
            }
        }));
        let result = tokio::time::timeout(Duration::from_secs(30), exchange)
            .await
            .expect("the exchange never finished: a wake was lost")
            .unwrap();
        assert_eq!(result, 4200);
    }
}
