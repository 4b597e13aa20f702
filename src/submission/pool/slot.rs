//! One mailbox's connections to one upstream server: at most `limit` of them open (busy
//! or idle) under one semaphore, the idle ones kept newest last, and a sweeper task that
//! closes each one idle longer than the idle limit with `QUIT`. A checked-out connection
//! is a [`Lease`]: it holds its permit until it is checked in or dropped (closed).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::connection::SmtpConnection;
use super::send::Left;

/// What a mailbox's connections to one server share.
pub struct Slot {
    pub(super) permits: Arc<Semaphore>,
    state: Mutex<SlotState>,
    /// Connections open, busy or idle.
    open: Arc<AtomicUsize>,
    /// Connections dialled, and checkouts served by a kept connection.
    pub(super) dials: AtomicU64,
    pub(super) reuses: AtomicU64,
    idle_limit: Duration,
    /// Connections older than this are closed rather than reused.
    max_age: Duration,
}

#[derive(Default)]
struct SlotState {
    /// Newest last.
    idle: Vec<Tracked>,
    /// The server's EHLO keywords after STARTTLS, and its `235` text, from the last login.
    capabilities: Vec<String>,
    ok: String,
    /// When the last login was (a connection dialled).
    logged_in: Option<Instant>,
    sweeping: bool,
}

/// An open connection, counted in its slot until it is dropped.
pub struct Tracked {
    pub conn: SmtpConnection,
    _open: OpenGuard,
}

struct OpenGuard(Arc<AtomicUsize>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connection checked out for one transaction.
pub struct Lease {
    pub conn: Tracked,
    permit: OwnedSemaphorePermit,
    slot: Arc<Slot>,
    /// How long connecting took, when this checkout dialled.
    pub connected_in: Option<Duration>,
}

impl Slot {
    pub fn new(limit: usize, idle_limit: Duration, max_age: Duration) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(limit.max(1))),
            state: Mutex::default(),
            open: Arc::default(),
            dials: AtomicU64::new(0),
            reuses: AtomicU64::new(0),
            idle_limit,
            max_age,
        }
    }

    /// Whether `tracked` may still be used: younger than the maximum age.
    pub fn young(&self, tracked: &Tracked) -> bool {
        tracked.conn.born.elapsed() < self.max_age
    }

    fn state(&self) -> MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Connections open (busy and idle), and idle.
    pub fn counts(&self) -> (usize, usize) {
        (self.open.load(Ordering::Relaxed), self.state().idle.len())
    }

    /// The EHLO keywords and the `235` text of the last login, if there was one.
    pub fn login(&self) -> Option<(Vec<String>, String)> {
        let state = self.state();
        (!state.capabilities.is_empty()).then(|| (state.capabilities.clone(), state.ok.clone()))
    }

    /// The same, only when that login is younger than the maximum age.
    pub fn recent_login(&self) -> Option<(Vec<String>, String)> {
        let young = self
            .state()
            .logged_in
            .is_some_and(|at| at.elapsed() < self.max_age);
        young.then(|| self.login()).flatten()
    }

    /// The newest idle connection, if any.
    pub fn take_idle(&self) -> Option<Tracked> {
        self.state().idle.pop()
    }

    /// Counts a connection just dialled (whose login said `capabilities` and `ok`).
    pub fn track(&self, conn: SmtpConnection, capabilities: Vec<String>, ok: String) -> Tracked {
        self.open.fetch_add(1, Ordering::Relaxed);
        self.dials.fetch_add(1, Ordering::Relaxed);
        let mut state = self.state();
        state.capabilities = capabilities;
        state.ok = ok;
        state.logged_in = Some(Instant::now());
        Tracked {
            conn,
            _open: OpenGuard(self.open.clone()),
        }
    }

    /// Keeps `conn` idle for the next transaction; the sweeper closes it later.
    fn put_idle(self: &Arc<Self>, conn: Tracked) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut state = self.state();
        state.idle.push(conn);
        if !state.sweeping {
            state.sweeping = true;
            runtime.spawn(sweep(self.clone()));
        }
    }
}

impl Lease {
    pub fn new(conn: Tracked, permit: OwnedSemaphorePermit, slot: Arc<Slot>) -> Self {
        let connected_in = None;
        Self {
            conn,
            permit,
            slot,
            connected_in,
        }
    }

    /// Gives the connection back as the transaction `left` it: kept as it is, kept after an
    /// `RSET` (in a task of its own, holding its permit until then), or closed.
    pub fn check_in(self, left: Left) {
        let Lease {
            conn, permit, slot, ..
        } = self;
        let left = match conn.conn.is_broken() {
            true => Left::Broken,
            false => left,
        };
        if left != Left::Broken && !slot.young(&conn) {
            // Past its maximum age: QUIT, holding the permit until the server saw it.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    conn.quit().await;
                    drop(permit);
                    tracing::debug!("upstream SMTP connection past its maximum age closed");
                });
            }
            return;
        }
        match left {
            Left::Clean => {
                slot.put_idle(conn);
                drop(permit);
            }
            Left::Open => {
                let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                    return;
                };
                runtime.spawn(async move {
                    let mut conn = conn;
                    match conn.conn.command(b"RSET\r\n").await {
                        Ok(reply) if reply.code == 250 => slot.put_idle(conn),
                        _ => tracing::debug!("upstream RSET failed; connection closed"),
                    }
                    drop(permit);
                });
            }
            Left::Broken => drop((conn, permit)),
        }
    }
}

impl Tracked {
    /// QUIT and close; the connection stops counting once closed.
    pub async fn quit(self) {
        let Tracked { conn, _open } = self;
        conn.quit().await;
    }
}

/// Closes the slot's connections as they pass the idle limit; ends when none is idle.
async fn sweep(slot: Arc<Slot>) {
    loop {
        let (expired, next) = {
            let mut state = slot.state();
            let now = Instant::now();
            let mut expired = Vec::new();
            let mut kept = Vec::new();
            for tracked in std::mem::take(&mut state.idle) {
                let old = now.duration_since(tracked.conn.used) >= slot.idle_limit;
                // Closing holds a permit, so that no new connection is dialled in its
                // place before the server saw the QUIT.
                match old
                    .then(|| slot.permits.clone().try_acquire_owned().ok())
                    .flatten()
                {
                    Some(permit) => expired.push((tracked, permit)),
                    None => kept.push(tracked),
                }
            }
            state.idle = kept;
            let next = state.idle.iter().map(|t| t.conn.used).min();
            if next.is_none() {
                state.sweeping = false;
            }
            (expired, next)
        };
        for (tracked, permit) in expired {
            let Tracked { conn, _open } = tracked;
            conn.quit().await;
            drop(permit);
            tracing::debug!("idle upstream SMTP connection closed");
        }
        match next {
            Some(used) => {
                let soonest = Instant::now() + Duration::from_millis(250);
                tokio::time::sleep_until((used + slot.idle_limit).max(soonest)).await;
            }
            None => return,
        }
    }
}
