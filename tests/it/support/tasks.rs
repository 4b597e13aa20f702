//! Keeps the JoinHandles of a fake's background tasks so that a panic inside a fake fails the test.
//!
//! Fakes spawn through a [`TaskWatch`]; internal failures that are not panics (for example a
//! handler that caught a panic itself) are recorded with [`TaskWatch::record_failure`]. The owner
//! calls [`TaskWatch::check`] whenever it likes and [`TaskWatch::shutdown`] from its `Drop`, which
//! aborts every task and panics (unless the thread is already panicking) if anything went wrong.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use tokio::task::JoinHandle;

/// The background tasks and recorded failures of one fake.
pub struct TaskWatch {
    name: &'static str,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    handles: Vec<JoinHandle<()>>,
    failures: Vec<String>,
}

impl TaskWatch {
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Spawns `fut` on the current runtime and keeps its handle; finished tasks are reaped here.
    pub fn spawn(&self, fut: impl Future<Output = ()> + Send + 'static) {
        let handle = tokio::spawn(fut);
        let mut inner = self.lock();
        reap(self.name, &mut inner);
        inner.handles.push(handle);
    }

    /// Records a failure inside the fake and prints it at once, so it shows even if the test hangs.
    pub fn record_failure(&self, message: impl Into<String>) {
        let message = message.into();
        eprintln!("!!! fake {} FAILED: {message}", self.name);
        self.lock().failures.push(message);
    }

    /// Every failure recorded so far, including panics of tasks that have already finished.
    pub fn failures(&self) -> Vec<String> {
        let mut inner = self.lock();
        reap(self.name, &mut inner);
        inner.failures.clone()
    }

    /// Panics with every recorded failure, if there is one.
    pub fn check(&self) {
        let failures = self.failures();
        if !failures.is_empty() {
            panic!("fake {} failed: {failures:#?}", self.name);
        }
    }

    /// Aborts all tasks, then fails like [`check`](Self::check) unless the thread is already panicking.
    pub fn shutdown(&self) {
        let failures = {
            let mut inner = self.lock();
            reap(self.name, &mut inner);
            for handle in &inner.handles {
                handle.abort();
            }
            inner.handles.clear();
            inner.failures.clone()
        };
        if !failures.is_empty() && !std::thread::panicking() {
            panic!("fake {} failed: {failures:#?}", self.name);
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock means some code panicked while holding it; that panic is reported on its own.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Stops a fake's tasks (and checks them) when the last clone of the fake drops it.
pub struct ServerGuard(Arc<TaskWatch>);

impl Drop for ServerGuard {
    fn drop(&mut self) {
        self.0.shutdown();
    }
}

/// Serves the HTTP fake `app` on `listener` as a task of `watch`; a stop of the server is
/// recorded as a failure. The returned guard shuts the tasks down.
pub fn serve_http(
    watch: Arc<TaskWatch>,
    listener: tokio::net::TcpListener,
    app: axum::Router,
) -> Arc<ServerGuard> {
    let server_watch = watch.clone();
    watch.spawn(async move {
        if let Err(err) = axum::serve(listener, app).await {
            server_watch.record_failure(format!("axum::serve stopped: {err}"));
        }
    });
    Arc::new(ServerGuard(watch))
}

/// Removes finished handles, turning panics into recorded failures.
fn reap(name: &str, inner: &mut Inner) {
    let mut still_running = Vec::with_capacity(inner.handles.len());
    for mut handle in inner.handles.drain(..) {
        if !handle.is_finished() {
            still_running.push(handle);
            continue;
        }
        // The task has finished, so its output is ready: one poll with a no-op waker reads it.
        let mut cx = Context::from_waker(Waker::noop());
        match Pin::new(&mut handle).poll(&mut cx) {
            Poll::Ready(Err(err)) if err.is_panic() => {
                let message = panic_message(err.into_panic());
                eprintln!("!!! fake {name}: a task panicked: {message}");
                inner.failures.push(format!("task panicked: {message}"));
            }
            Poll::Ready(_) => {}
            Poll::Pending => still_running.push(handle),
        }
    }
    inner.handles = still_running;
}

/// The text of a panic payload (`&str` or `String`), as the default hook would print it.
pub fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(payload) => match payload.downcast::<&'static str>() {
            Ok(s) => (*s).to_string(),
            Err(_) => "<non-string panic payload>".to_string(),
        },
    }
}
