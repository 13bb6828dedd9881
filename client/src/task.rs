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
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use futures::task::AtomicWaker;

/// Polls again, at most this many times in a row, a future that woke itself; then leaves it
/// to the scheduler, so one task cannot keep its thread from others.
const MAX_INLINE_POLLS: usize = 16;

/// Runs `future`, polling it again at once (instead of rescheduling the task) when it woke
/// its own task while being polled, as long as Tokio's cooperative budget lasts. Wakes from
/// anywhere else (a socket becoming readable, another task) reach the task as usual.
pub async fn inline_self_wakes<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let flag = Arc::new(WakeFlag::default());
    let waker = Waker::from(flag.clone());
    std::future::poll_fn(|cx| {
        flag.task.register(cx.waker());
        let mut inner = Context::from_waker(&waker);
        for _ in 0..MAX_INLINE_POLLS {
            // In this order: a wake between the two stores reaches the task itself (a
            // spurious poll at worst), never nobody.
            flag.woken.store(false, SeqCst);
            flag.polling.store(true, SeqCst);
            let poll = future.as_mut().poll(&mut inner);
            flag.polling.store(false, SeqCst);
            if poll.is_ready() {
                return poll;
            }
            // Not woken during the poll: whoever wakes it later finds `polling` false and
            // wakes the task.
            if !flag.woken.swap(false, SeqCst) {
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
    woken: AtomicBool,
    polling: AtomicBool,
    task: AtomicWaker,
}

impl Wake for WakeFlag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // `woken` before `polling` is read, against the poll loop's store of `polling`
        // and then read of `woken`: one of the two sides sees the other's write.
        self.woken.store(true, SeqCst);
        if !self.polling.load(SeqCst) {
            self.task.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use tokio::sync::{mpsc, oneshot};

    use super::*;

    /// A future that wakes itself `n` times before it is ready, counting its polls.
    struct WakesItself {
        left: usize,
        polls: Arc<AtomicUsize>,
    }

    impl Future for WakesItself {
        type Output = ();
        fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, SeqCst);
            if self.left == 0 {
                return Poll::Ready(());
            }
            self.left -= 1;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }

    /// How often the task around the future was polled: the future itself is polled
    /// `n + 1` times either way.
    async fn task_polls(n: usize, inline: bool) -> (usize, usize) {
        let (polls, task) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let future = WakesItself {
            left: n,
            polls: polls.clone(),
        };
        let counted = task.clone();
        let counting = async move {
            let mut inner = if inline {
                Box::pin(inline_self_wakes(future))
                    as std::pin::Pin<Box<dyn Future<Output = ()> + Send>>
            } else {
                Box::pin(future)
            };
            std::future::poll_fn(move |cx| {
                counted.fetch_add(1, SeqCst);
                inner.as_mut().poll(cx)
            })
            .await
        };
        tokio::spawn(counting).await.unwrap();
        (polls.load(SeqCst), task.load(SeqCst))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn self_wakes_are_polled_again_within_one_poll_of_the_task() {
        assert_eq!(task_polls(3, false).await, (4, 4));
        assert_eq!(task_polls(3, true).await, (4, 1));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_future_that_keeps_waking_itself_still_yields_its_thread() {
        // More self-wakes than one poll of the task takes inline: the task is polled again
        // by the scheduler, and the future still completes.
        let n = MAX_INLINE_POLLS * 3;
        let (polls, task) = task_polls(n, true).await;
        assert_eq!(polls, n + 1);
        assert!(task >= 3, "{task} polls of the task for {n} self-wakes");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn wakes_from_other_tasks_and_threads_are_not_lost() {
        // Values sent from another thread at random moments, some while the receiving
        // future is being polled: every one must arrive, and the run must not hang.
        let (tx, mut rx) = mpsc::unbounded_channel::<usize>();
        let sender = std::thread::spawn(move || {
            for i in 0..10_000 {
                tx.send(i).unwrap();
                if i % 97 == 0 {
                    std::thread::sleep(Duration::from_micros(50));
                }
            }
        });
        let received = tokio::time::timeout(
            Duration::from_secs(30),
            inline_self_wakes(async move {
                let mut sum = 0;
                while let Some(i) = rx.recv().await {
                    sum += i;
                }
                sum
            }),
        )
        .await
        .expect("a wake was lost");
        sender.join().unwrap();
        assert_eq!(received, (0..10_000).sum::<usize>());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_and_its_answer_within_one_task_complete() {
        // The shape of an HTTP exchange driven in one task: one part sends, the other
        // answers, both polled by the same task.
        let result = inline_self_wakes(async {
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
        })
        .await;
        assert_eq!(result, 4200);
    }
}
