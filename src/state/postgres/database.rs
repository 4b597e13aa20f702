//! [`Database`]: the one connection pool to PostgreSQL, on a small runtime of its own
//! (one thread, `state-postgres`), so that the synchronous state traits can call it from
//! anywhere — an async worker, the blocking pool, the CLI — with [`Database::call`], and
//! async code with [`Database::run`]. Every call is bounded by `state.timeout_secs`.
//!
//! The database's reachability is tracked here: a call that cannot reach it marks it
//! unreachable (the relay is then degraded: it serves from what it holds), the next call
//! that succeeds marks it reachable again; both are logged once. Errors name the server
//! (`host:port/database`) and what was asked, never the URL, a value or a secret.

use std::future::Future;
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use tokio_postgres::config::SslMode;

use super::tls::connector;
use crate::config::{DatabaseConfig, DatabaseTls};

/// Why a database call failed. Never holds the URL, a value or a secret.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum DatabaseError {
    /// The server cannot be reached, or dropped the connection.
    #[error("the database {server} is unreachable ({why})")]
    Unreachable { server: String, why: String },
    /// No answer within `state.timeout_secs`.
    #[error("the database {server} did not answer ({what}) within {} s", timeout.as_secs())]
    Timeout {
        server: String,
        what: &'static str,
        timeout: Duration,
    },
    /// The server answered with an error.
    #[error("the database {server} refused {what}: {why}")]
    Refused {
        server: String,
        what: &'static str,
        why: String,
    },
    /// The pool or its TLS could not be set up, or the stored data is not what this relay
    /// writes.
    #[error("the database {server}: {why}")]
    Setup { server: String, why: String },
}

impl DatabaseError {
    /// Whether the database could not be reached (rather than refusing a request).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Self::Unreachable { .. } | Self::Timeout { .. })
    }
}

/// Whether the database can be reached, as the last call found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseHealth {
    /// `host:port/database`.
    pub server: String,
    /// `None` while reachable; else since when it is not, and why.
    pub unreachable: Option<(SystemTime, String)>,
}

/// The pool of connections to the state database (cheap to clone).
#[derive(Clone)]
pub struct Database {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    handle: tokio::runtime::Handle,
    timeout: Duration,
    server: String,
    pg: tokio_postgres::Config,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    unreachable: Mutex<Option<(SystemTime, String)>>,
    _runtime: OwnedRuntime,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("server", &self.inner.server)
            .finish_non_exhaustive()
    }
}

/// The runtime of the pool; shut down without waiting when the last handle goes, which
/// may be on an async thread.
struct OwnedRuntime(Option<tokio::runtime::Runtime>);

impl Drop for OwnedRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

impl Database {
    /// The pool for `config`. Nothing is connected until the first call.
    pub fn open(config: &DatabaseConfig) -> Result<Self, DatabaseError> {
        let setup = |why: String| DatabaseError::Setup {
            server: config.server.clone(),
            why,
        };
        let pg = pg_config(config)?;
        let tls = connector(config.ca_file.as_deref()).map_err(setup)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("state-postgres")
            .enable_all()
            .build()
            .map_err(|e| setup(format!("cannot start its thread: {e}")))?;
        let manager = Manager::from_config(
            pg.clone(),
            tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(config.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(config.timeout))
            .create_timeout(Some(config.timeout))
            .recycle_timeout(Some(config.timeout))
            .build()
            .map_err(|e| setup(format!("cannot build the pool: {e}")))?;
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                handle: runtime.handle().clone(),
                timeout: config.timeout,
                server: config.server.clone(),
                pg,
                tls,
                unreachable: Mutex::new(None),
                _runtime: OwnedRuntime(Some(runtime)),
            }),
        })
    }

    /// `host:port/database`.
    pub fn server(&self) -> &str {
        &self.inner.server
    }

    /// The bound of each call.
    pub fn timeout(&self) -> Duration {
        self.inner.timeout
    }

    /// Runs `f` with a pooled connection on the database's runtime and waits for it,
    /// blocking this thread, at most `state.timeout_secs`. Never call it from a task on
    /// the database's runtime itself (use [`Database::run`]).
    pub fn call<T, F, Fut>(&self, what: &'static str, f: F) -> Result<T, DatabaseError>
    where
        T: Send + 'static,
        F: FnOnce(Object) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, tokio_postgres::Error>> + Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let task = self.clone();
        self.inner.handle.spawn(async move {
            let _ = tx.send(task.attempt(what, f).await);
        });
        // The task's own timeout answers first; this one only guards a stopped runtime.
        let result = rx
            .recv_timeout(self.inner.timeout + Duration::from_secs(1))
            .unwrap_or_else(|_| Err(self.timed_out(what)));
        self.note(result)
    }

    /// [`Database::call`] for work that brings its own connection (one held across calls,
    /// as the registry's lock is): `work` runs on the database's runtime, bounded the same.
    pub fn call_held<T, Fut>(&self, what: &'static str, work: Fut) -> Result<T, DatabaseError>
    where
        T: Send + 'static,
        Fut: Future<Output = Result<T, tokio_postgres::Error>> + Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let task = self.clone();
        self.inner.handle.spawn(async move {
            let bounded = tokio::time::timeout(task.inner.timeout, work);
            let result = match bounded.await {
                Ok(result) => result.map_err(|e| task.classify(what, &e)),
                Err(_) => Err(task.timed_out(what)),
            };
            let _ = tx.send(result);
        });
        let result = rx
            .recv_timeout(self.inner.timeout + Duration::from_secs(1))
            .unwrap_or_else(|_| Err(self.timed_out(what)));
        self.note(result)
    }

    /// [`Database::call`] for async code: the work still runs on the database's runtime.
    pub async fn run<T, F, Fut>(&self, what: &'static str, f: F) -> Result<T, DatabaseError>
    where
        T: Send + 'static,
        F: FnOnce(Object) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, tokio_postgres::Error>> + Send + 'static,
    {
        let task = self.clone();
        let job = self
            .inner
            .handle
            .spawn(async move { task.attempt(what, f).await });
        let result = match job.await {
            Ok(result) => result,
            Err(_) => Err(self.timed_out(what)),
        };
        self.note(result)
    }

    /// Spawns `task` on the database's runtime (the registry's `LISTEN`, for one).
    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.inner.handle.spawn(task);
    }

    /// A connection of its own, outside the pool, listening on `channel`: the client
    /// (keep it: dropping it ends the connection) and the notifications, which end when
    /// the connection does. Call on the database's runtime ([`Database::spawn`]).
    pub async fn listen(
        &self,
        channel: &'static str,
    ) -> Result<
        (
            tokio_postgres::Client,
            tokio::sync::mpsc::Receiver<tokio_postgres::Notification>,
        ),
        DatabaseError,
    > {
        let connecting = self.inner.pg.connect(self.inner.tls.clone());
        let (client, mut connection) =
            match tokio::time::timeout(self.inner.timeout, connecting).await {
                Ok(Ok(pair)) => pair,
                Ok(Err(e)) => return self.note(Err(self.classify("connect", &e))),
                Err(_) => return self.note(Err(self.timed_out("connect"))),
            };
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        self.spawn(async move {
            while let Some(Ok(message)) =
                std::future::poll_fn(|cx| connection.poll_message(cx)).await
            {
                if let tokio_postgres::AsyncMessage::Notification(n) = message {
                    // A full channel drops a notification: the listener re-reads anyway.
                    let _ = tx.try_send(n);
                }
            }
        });
        let statement = format!("LISTEN {channel}");
        let listening = client.batch_execute(&statement);
        match tokio::time::timeout(self.inner.timeout, listening).await {
            Ok(Ok(())) => self.note(Ok((client, rx))),
            Ok(Err(e)) => self.note(Err(self.classify("LISTEN", &e))),
            Err(_) => self.note(Err(self.timed_out("LISTEN"))),
        }
    }

    /// Whether the database is reachable, as the last call found.
    pub fn health(&self) -> DatabaseHealth {
        DatabaseHealth {
            server: self.inner.server.clone(),
            unreachable: self
                .inner
                .unreachable
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        }
    }

    async fn attempt<T, F, Fut>(&self, what: &'static str, f: F) -> Result<T, DatabaseError>
    where
        F: FnOnce(Object) -> Fut,
        Fut: Future<Output = Result<T, tokio_postgres::Error>>,
    {
        let work = async {
            let client = self.inner.pool.get().await.map_err(|e| match e {
                deadpool_postgres::PoolError::Backend(e) => self.classify(what, &e),
                deadpool_postgres::PoolError::Timeout(_) => self.timed_out(what),
                other => self.unreachable(other.to_string()),
            })?;
            f(client).await.map_err(|e| self.classify(what, &e))
        };
        match tokio::time::timeout(self.inner.timeout, work).await {
            Ok(result) => result,
            Err(_) => Err(self.timed_out(what)),
        }
    }

    /// A server's error as refused, unless it says the server is going away or cannot
    /// take the connection (classes 08, 53, 57), which is unreachable like a lost socket.
    fn classify(&self, what: &'static str, e: &tokio_postgres::Error) -> DatabaseError {
        match e.as_db_error() {
            Some(db) if !matches!(&db.code().code()[..2], "08" | "53" | "57") => {
                DatabaseError::Refused {
                    server: self.inner.server.clone(),
                    what,
                    why: format!("{} ({})", db.message(), db.code().code()),
                }
            }
            Some(db) => self.unreachable(format!("{} ({})", db.message(), db.code().code())),
            None => self.unreachable(crate::logfield::chain(e)),
        }
    }

    fn unreachable(&self, why: String) -> DatabaseError {
        DatabaseError::Unreachable {
            server: self.inner.server.clone(),
            why,
        }
    }

    fn timed_out(&self, what: &'static str) -> DatabaseError {
        DatabaseError::Timeout {
            server: self.inner.server.clone(),
            what,
            timeout: self.inner.timeout,
        }
    }

    /// Records what `result` says of the database's reachability, logging a change.
    fn note<T>(&self, result: Result<T, DatabaseError>) -> Result<T, DatabaseError> {
        let mut unreachable = self
            .inner
            .unreachable
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match &result {
            Err(e) if e.is_unreachable() => {
                if unreachable.is_none() {
                    tracing::warn!(database = %self.inner.server, error = %e,
                        "the state database is unreachable: degraded, serving from what this relay holds");
                }
                *unreachable = Some((SystemTime::now(), e.to_string()));
            }
            _ => {
                if unreachable.take().is_some() {
                    tracing::info!(database = %self.inner.server, "the state database is reachable again");
                }
            }
        }
        result
    }
}

/// The client settings of `config`: its URL, TLS as the config says, the connect timeout,
/// keepalives and the server-side statement timeout.
fn pg_config(config: &DatabaseConfig) -> Result<tokio_postgres::Config, DatabaseError> {
    let setup = |why: String| DatabaseError::Setup {
        server: config.server.clone(),
        why,
    };
    let mut pg = tokio_postgres::Config::from_str(config.url.expose())
        .map_err(|e| setup(format!("the URL is not accepted: {e}")))?;
    pg.ssl_mode(match config.tls {
        DatabaseTls::Disable => SslMode::Disable,
        DatabaseTls::Prefer => SslMode::Prefer,
        DatabaseTls::Require => SslMode::Require,
    });
    pg.connect_timeout(config.timeout);
    // A connection that a NAT or balancer dropped without a word (the registry's idle
    // LISTEN, pooled ones) is found in about a minute, not after the system's 2 hours.
    pg.keepalives(true)
        .keepalives_idle(Duration::from_secs(30))
        .keepalives_interval(Duration::from_secs(10))
        .keepalives_retries(3);
    // The server gives up on a statement the relay stopped waiting for, so that the
    // connection it goes back to the pool on is free again.
    let bound = format!("-c statement_timeout={}", config.timeout.as_millis());
    let options = match pg.get_options() {
        Some(theirs) => format!("{theirs} {bound}"),
        None => bound,
    };
    pg.options(&options);
    pg.application_name("m365-relay");
    Ok(pg)
}
