//! One shutdown for a process's background loops, in the manner of mini-redis' `shutdown.rs`:
//! every loop (the database watch, the lease sweeper, refresh-ahead, the hit summary, the
//! metrics endpoint) is spawned through [`Background::spawn`], and [`Background::stop`] ends them
//! all and waits for them, after the server has drained its calls and before the database pool
//! is closed.

use std::{
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{sync::watch, task::JoinHandle};

/// The process's background tasks and the signal that stops them.
#[derive(Clone)]
pub struct Background {
    stop: Arc<watch::Sender<bool>>,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Default for Background {
    fn default() -> Self {
        Self::new()
    }
}

impl Background {
    pub fn new() -> Self {
        Self {
            stop: Arc::new(watch::channel(false).0),
            tasks: Arc::default(),
        }
    }

    /// Resolves once [`Background::stop`] is called (never if every handle is dropped first:
    /// the loops then run until the process ends).
    pub fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.stop.subscribe();
        async move {
            if rx.wait_for(|stopped| *stopped).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Runs `task` until it ends or the process stops.
    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let stopped = self.stopped();
        let handle = tokio::spawn(async move {
            tokio::select! {
                _ = task => {}
                _ = stopped => {}
            }
        });
        let mut tasks = self.tasks.lock().expect("background tasks");
        tasks.retain(|t| !t.is_finished());
        tasks.push(handle);
    }

    /// Stops every task and waits for them to end, at most `within`; answers how many were
    /// running.
    pub async fn stop(&self, within: Duration) -> usize {
        let tasks = std::mem::take(&mut *self.tasks.lock().expect("background tasks"));
        // Counted before the signal, which ends them.
        let running = tasks.iter().filter(|t| !t.is_finished()).count();
        self.stop.send_replace(true);
        let _ = tokio::time::timeout(within, futures::future::join_all(tasks)).await;
        running
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn stop_ends_every_loop_and_later_ones_at_once() {
        let bg = Background::new();
        let ticks = Arc::new(std::sync::atomic::AtomicU32::new(0));
        for _ in 0..3 {
            let ticks = ticks.clone();
            bg.spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    ticks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            });
        }
        bg.spawn(async {});
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        assert_eq!(bg.stop(Duration::from_secs(1)).await, 3, "three loops ran");
        let seen = ticks.load(std::sync::atomic::Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(
            ticks.load(std::sync::atomic::Ordering::Relaxed),
            seen,
            "no loop runs after the stop"
        );
        // A loop started after the stop ends at once.
        let late = bg.clone();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        late.spawn(async move {
            let _keep = tx;
            std::future::pending::<()>().await
        });
        assert!(
            rx.await.is_err(),
            "the late loop ended (its sender dropped)"
        );
    }
}
