//! Coalesces reconcile triggers. The first trigger for an object schedules one reconcile a
//! fixed window later; further triggers for it meanwhile ride along with that one.
//!
//! Unlike a trailing debounce (which waits for a quiet moment), this bounds the lag: an
//! array parent hearing from thousands of child pods a second is still reconciled once per
//! window, and a job whose pod is created, bound and started within the window has its
//! status written once, not once per step.

use std::collections::{HashSet, VecDeque};
use std::hash::Hash;
use std::time::Duration;

use futures::channel::mpsc::UnboundedReceiver;
use futures::{Stream, StreamExt, stream};
use tokio::time::Instant;

struct State<T> {
    input: UnboundedReceiver<T>,
    /// Due times in arrival order; with one window for all, that is also due order.
    queue: VecDeque<(Instant, T)>,
    queued: HashSet<T>,
    closed: bool,
}

/// Each distinct item of `input`, at most once per `window`, `window` after it first came.
pub fn coalesce<T>(input: UnboundedReceiver<T>, window: Duration) -> impl Stream<Item = T>
where
    T: Hash + Eq + Clone,
{
    let state = State { input, queue: VecDeque::new(), queued: HashSet::new(), closed: false };
    stream::unfold(state, move |mut s| async move {
        loop {
            if let Some((due, _)) = s.queue.front()
                && *due <= Instant::now()
            {
                let (_, item) = s.queue.pop_front().expect("front exists");
                s.queued.remove(&item);
                return Some((item, s));
            }
            if s.closed && s.queue.is_empty() {
                return None;
            }
            let next_due = s.queue.front().map(|(due, _)| *due);
            tokio::select! {
                item = s.input.next(), if !s.closed => match item {
                    Some(item) => {
                        if s.queued.insert(item.clone()) {
                            s.queue.push_back((Instant::now() + window, item));
                        }
                    }
                    None => s.closed = true,
                },
                _ = tokio::time::sleep_until(next_due.unwrap_or_else(Instant::now)), if next_due.is_some() => {}
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::channel::mpsc;

    const WINDOW: Duration = Duration::from_secs(1);

    /// Runs the coalescer on its own task; returns what came out and when (ms from start).
    fn collect<T: Hash + Eq + Clone + Send + 'static>(
        rx: UnboundedReceiver<T>,
    ) -> tokio::task::JoinHandle<Vec<(T, u128)>> {
        let start = Instant::now();
        tokio::spawn(async move {
            coalesce(rx, WINDOW).map(|item| (item, start.elapsed().as_millis())).collect().await
        })
    }

    #[tokio::test(start_paused = true)]
    async fn triggers_within_a_window_make_one_item() {
        let (tx, rx) = mpsc::unbounded();
        let out = collect(rx);
        for _ in 0..5 {
            tx.unbounded_send("a").unwrap();
        }
        tx.unbounded_send("b").unwrap();
        drop(tx);
        assert_eq!(out.await.unwrap(), vec![("a", 1000), ("b", 1000)]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_item_still_comes_once_per_window() {
        let (tx, rx) = mpsc::unbounded();
        let out = collect(rx);
        // A trigger every 70 ms for 3.5 s: a trailing debounce would not fire until the end.
        for _ in 0..50 {
            tx.unbounded_send("parent").unwrap();
            tokio::time::sleep(Duration::from_millis(70)).await;
        }
        drop(tx);
        let times: Vec<u128> = out.await.unwrap().into_iter().map(|(_, t)| t).collect();
        // Each window opens at the first trigger after the last reconcile.
        assert_eq!(times, vec![1000, 2050, 3100, 4150]);
    }

    #[tokio::test(start_paused = true)]
    async fn each_item_waits_its_own_window() {
        let (tx, rx) = mpsc::unbounded();
        let out = collect(rx);
        tx.unbounded_send(1).unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        tx.unbounded_send(2).unwrap();
        tx.unbounded_send(1).unwrap();
        drop(tx);
        assert_eq!(out.await.unwrap(), vec![(1, 1000), (2, 1300)]);
    }
}
