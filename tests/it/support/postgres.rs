//! A private, real PostgreSQL cluster for one test: `initdb` and `pg_ctl` in a temporary folder,
//! password (SCRAM) authentication, listening on 127.0.0.1 at a free port and on a Unix socket
//! inside the folder, optionally with TLS (a certificate from the test's CA). As root (initdb and
//! pg_ctl refuse root) the cluster runs as the `postgres` system user, otherwise as the current
//! user. Dropping the cluster stops it at once (immediate mode), also when the test panics.
//!
//! The binaries come from Debian's `postgresql` package (`/usr/lib/postgresql/<highest>/bin`),
//! else from `PATH`. When they are missing the test fails, telling to run `tests/run.sh`, which
//! installs them: a test never skips because PostgreSQL is absent.

use std::ffi::{OsStr, OsString};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use m365_relay::config::{DatabaseConfig, DatabaseTls};
use m365_relay::secret::DatabaseUrl;
use tempfile::TempDir;

use super::certs::TestPki;
use super::pg_machine::{running_as_root, server_binaries, system_user};

/// The cluster's superuser (what `initdb --username` creates).
pub const SUPERUSER: &str = "postgres";

/// The system user that owns and runs the cluster when the tests run as root.
const SYSTEM_USER: &str = "postgres";

/// Enough for several relays with their pools, the CLI and the test's own connections.
const MAX_CONNECTIONS: u32 = 300;

/// How long `pg_ctl` waits for a start or a stop.
const PG_CTL_WAIT_SECS: &str = "60";

/// One private PostgreSQL cluster (see the module documentation).
pub struct PgCluster {
    /// The temporary folder: `data/` (the cluster), `sock/` (its Unix socket), `server.log`.
    dir: TempDir,
    bin: PathBuf,
    port: u16,
    password: String,
    /// `Some((uid, gid))` of the `postgres` system user when the tests run as root.
    owner: Option<(u32, u32)>,
    running: bool,
    tls: bool,
}

impl PgCluster {
    /// A new cluster, initialised and started (plaintext on loopback and the Unix socket).
    pub fn start() -> Self {
        let mut cluster = Self::init();
        cluster.start_server();
        cluster
    }

    /// A new cluster that requires TLS on TCP, with a certificate for `127.0.0.1` and `localhost`
    /// issued by `pki` (the relay verifies it against `pki`'s CA); the Unix socket stays plaintext.
    pub fn start_with_tls(pki: &TestPki) -> Self {
        let mut cluster = Self::init();
        cluster.enable_tls(pki);
        cluster.start_server();
        cluster
    }

    /// `initdb` in a fresh temporary folder, configured but not started.
    fn init() -> Self {
        let bin = server_binaries();
        let owner = if running_as_root() {
            Some(system_user(SYSTEM_USER))
        } else {
            None
        };
        let dir = tempfile::Builder::new()
            .prefix("m365-relay-pg")
            .tempdir()
            .expect("temporary folder for PostgreSQL");
        let cluster = Self {
            dir,
            bin,
            port: free_port(),
            password: random_password(),
            owner,
            running: false,
            tls: false,
        };
        cluster.initdb();
        cluster.configure();
        cluster
    }

    fn initdb(&self) {
        let sock = self.socket_dir();
        std::fs::create_dir(&sock).expect("socket folder");
        let pwfile = self.dir.path().join("pwfile");
        std::fs::write(&pwfile, format!("{}\n", self.password)).expect("write pwfile");
        self.give_to_owner(self.dir.path());
        self.give_to_owner(&sock);
        self.give_to_owner(&pwfile);
        let out = self.run_as_owner(
            "initdb",
            &[
                OsStr::new("--pgdata"),
                self.data_dir().as_os_str(),
                "--username".as_ref(),
                SUPERUSER.as_ref(),
                "--auth=scram-sha-256".as_ref(),
                "--pwfile".as_ref(),
                pwfile.as_os_str(),
                "--no-sync".as_ref(),
                "--encoding=UTF8".as_ref(),
                "--locale=C".as_ref(),
            ],
        );
        std::fs::remove_file(&pwfile).expect("remove pwfile");
        assert!(out.status.success(), "initdb failed: {}", describe(&out));
    }

    /// Loopback TCP on the chosen port, the socket in our folder, and room for several relays.
    /// `fsync = off` trades durability against a crash of the machine (a test's cluster never
    /// outlives it) for speed; `synchronous_commit` stays on, so that a commit survives a crash
    /// of the server ([`PgCluster::kill`]).
    fn configure(&self) {
        let settings = format!(
            "\n# m365-relay tests\n\
             listen_addresses = '127.0.0.1'\n\
             port = {port}\n\
             unix_socket_directories = '{sock}'\n\
             max_connections = {MAX_CONNECTIONS}\n\
             shared_buffers = 16MB\n\
             fsync = off\n\
             full_page_writes = off\n\
             log_min_messages = warning\n",
            port = self.port,
            sock = self.socket_dir().display(),
        );
        self.append_conf("postgresql.conf", &settings);
    }

    /// Turns TLS on with a leaf for 127.0.0.1 and localhost, and refuses TCP without TLS.
    fn enable_tls(&mut self, pki: &TestPki) {
        let leaf = pki.issue(&["127.0.0.1", "localhost"]);
        let (cert, key) = leaf.write_to(&self.data_dir(), "server");
        self.give_to_owner(&cert);
        self.give_to_owner(&key);
        let settings = format!(
            "ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\n",
            cert.display(),
            key.display()
        );
        self.append_conf("postgresql.conf", &settings);
        // pg_hba.conf: the first matching line wins, so plaintext TCP is rejected before the
        // `host` lines initdb wrote could accept it.
        let hba = self.data_dir().join("pg_hba.conf");
        let written = std::fs::read_to_string(&hba).expect("read pg_hba.conf");
        let required = "hostnossl all all 0.0.0.0/0 reject\nhostnossl all all ::/0 reject\n";
        std::fs::write(&hba, format!("{required}{written}")).expect("write pg_hba.conf");
        self.tls = true;
    }

    fn append_conf(&self, file: &str, text: &str) {
        use std::io::Write;
        let path = self.data_dir().join(file);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        f.write_all(text.as_bytes())
            .expect("append to the PostgreSQL config");
    }

    // --- life cycle -------------------------------------------------------------------------

    /// Starts the server and waits until it accepts connections. The first start moves to
    /// another port when the chosen one was taken in the meantime; later starts keep the port.
    pub fn start_server(&mut self) {
        assert!(!self.running, "the cluster is already running");
        let log = self.dir.path().join("server.log");
        let first = !log.exists();
        if first {
            std::fs::write(&log, "").expect("create server.log");
            self.give_to_owner(&log);
        }
        for _ in 0..3 {
            let out = self.pg_ctl(&[
                OsStr::new("start"),
                "-w".as_ref(),
                "-l".as_ref(),
                log.as_ref(),
            ]);
            if out.status.success() {
                self.running = true;
                return;
            }
            let tail = self.log_tail();
            assert!(
                first && tail.contains("could not bind"),
                "pg_ctl start failed: {}\n--- server.log ---\n{tail}",
                describe(&out)
            );
            self.port = free_port();
            self.append_conf("postgresql.conf", &format!("port = {}\n", self.port));
        }
        panic!("pg_ctl start: no free port in 3 tries\n{}", self.log_tail());
    }

    /// Stops the server cleanly and at once ("fast": open sessions are ended, then a checkpoint).
    pub fn stop(&mut self) {
        self.stop_mode("fast");
    }

    /// Stops the server as a crash would ("immediate": no checkpoint; recovery at the next start).
    pub fn kill(&mut self) {
        self.stop_mode("immediate");
    }

    /// A fast stop, then a start on the same port.
    pub fn restart(&mut self) {
        self.stop();
        self.start_server();
    }

    /// Whether the server was started and not stopped since.
    pub fn is_running(&self) -> bool {
        self.running
    }

    fn stop_mode(&mut self, mode: &str) {
        assert!(self.running, "the cluster is not running");
        let out = self.pg_ctl(&["stop", "-w", "-m", mode]);
        assert!(
            out.status.success(),
            "pg_ctl stop failed: {}",
            describe(&out)
        );
        self.running = false;
    }

    /// `pg_ctl <args> -D <data> -t <wait>` as the cluster's owner.
    fn pg_ctl<S: AsRef<OsStr>>(&self, args: &[S]) -> Output {
        let mut all: Vec<OsString> = args.iter().map(|a| a.as_ref().to_owned()).collect();
        all.extend([
            "-D".into(),
            self.data_dir().into(),
            "-t".into(),
            PG_CTL_WAIT_SECS.into(),
        ]);
        self.run_as_owner("pg_ctl", &all)
    }

    // --- connecting -------------------------------------------------------------------------

    /// The loopback TCP port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The superuser's password.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// Whether TCP connections must use TLS ([`PgCluster::start_with_tls`]).
    pub fn tls(&self) -> bool {
        self.tls
    }

    /// A URL for the superuser over TCP loopback to `database` (password included). With TLS
    /// the server requires it; which `sslmode` the client uses is the client's choice.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://{SUPERUSER}:{}@127.0.0.1:{}/{database}",
            self.password, self.port
        )
    }

    /// The relay's `[state]` settings for `database` over TCP loopback, plaintext (or,
    /// with TLS, verified against `ca_file`), with a small pool.
    pub fn database_config(&self, database: &str, ca_file: Option<&Path>) -> DatabaseConfig {
        DatabaseConfig {
            url: DatabaseUrl::new(self.url(database)),
            tls: if self.tls {
                DatabaseTls::Require
            } else {
                DatabaseTls::Disable
            },
            ca_file: ca_file.map(Path::to_owned),
            pool_size: 4,
            timeout: Duration::from_secs(5),
            server: format!("127.0.0.1:{}/{database}", self.port),
        }
    }

    /// Creates the empty database `name` (letters, digits, `_`) and returns its [`url`](Self::url).
    pub fn create_database(&self, name: &str) -> String {
        assert!(
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
            "database name {name:?}: use a-z, 0-9 and _"
        );
        self.psql("postgres", &format!("CREATE DATABASE {name}"));
        self.url(name)
    }

    /// Runs `sql` in `database` with `psql` over the Unix socket and returns its unaligned,
    /// tuples-only output (`|` between columns, one line per row); panics on an SQL error.
    pub fn psql(&self, database: &str, sql: &str) -> String {
        let out = self.client(
            "psql",
            database,
            &["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql],
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `pg_dump` of `database` (schema and data, plain SQL), as text, followed by every
    /// `bytea` value of it decoded (the dump writes them in hex, where no text would show).
    pub fn pg_dump(&self, database: &str) -> String {
        let out = self.client("pg_dump", database, &["--no-owner"]);
        let dump = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut decoded = String::new();
        for hex in dump.split("\\x").skip(1) {
            let digits: Vec<u8> = hex.bytes().take_while(u8::is_ascii_hexdigit).collect();
            let bytes: Vec<u8> = digits
                .chunks_exact(2)
                .filter_map(|pair| u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok())
                .collect();
            decoded.push_str(&String::from_utf8_lossy(&bytes));
            decoded.push('\n');
        }
        format!("{dump}\n-- bytea values decoded:\n{decoded}")
    }

    /// Runs a client program (psql, pg_dump) of the same installation as the current user, over
    /// the Unix socket with the superuser's password.
    fn client(&self, program: &str, database: &str, args: &[&str]) -> Output {
        assert!(self.running, "the cluster is not running");
        let out = Command::new(self.bin.join(program))
            .args(["-h"])
            .arg(self.socket_dir())
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                SUPERUSER,
                "-d",
                database,
            ])
            .args(args)
            .env("PGPASSWORD", &self.password)
            .env("PGCONNECT_TIMEOUT", "10")
            .output()
            .unwrap_or_else(|e| panic!("run {program}: {e}"));
        assert!(out.status.success(), "{program} failed: {}", describe(&out));
        out
    }

    // --- files and users --------------------------------------------------------------------

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn socket_dir(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    /// The last lines of the server's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    fn give_to_owner(&self, path: &Path) {
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .unwrap_or_else(|e| panic!("chown {} to {SYSTEM_USER}: {e}", path.display()));
        }
    }

    /// Runs a server program (`initdb`, `pg_ctl`) as the cluster's owner, in the temporary
    /// folder (so that it can read its working directory).
    fn run_as_owner<S: AsRef<OsStr>>(&self, program: &str, args: &[S]) -> Output {
        let path = self.bin.join(program);
        let mut cmd = match self.owner {
            Some(_) => {
                let mut cmd = Command::new("runuser");
                cmd.args(["-u", SYSTEM_USER, "--"]).arg(&path);
                cmd
            }
            None => Command::new(&path),
        };
        cmd.args(args)
            .current_dir(self.dir.path())
            .env("LC_ALL", "C")
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", path.display()))
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if self.running {
            // Immediate: the folder is removed next, nothing needs to be kept.
            let _ = self.pg_ctl(&["stop", "-w", "-m", "immediate"]);
        }
    }
}

/// A port that was free a moment ago on 127.0.0.1.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// 32 random hex characters.
fn random_password() -> String {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).expect("random bytes");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn describe(out: &Output) -> String {
    format!(
        "{}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
