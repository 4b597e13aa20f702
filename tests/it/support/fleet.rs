//! Several relays on one database: a private PostgreSQL cluster ([`PgCluster`]), the fakes of
//! Entra ID and Exchange Online that every replica shares ([`World`]), the command line as a
//! process of its own on the database (the world's config, `[state] backend = "postgres"`), and
//! two or three `m365-relay serve` PROCESSES ([`Replica`]), each in a folder of its own with its
//! own config and loopback ports, and the same state key (`M365_RELAY_KEY`) and admin token
//! (`M365_RELAY_ADMIN_TOKEN`), as a Kubernetes Secret would give them. A replica can be killed
//! (SIGKILL) and started again; the database can be stopped, killed and restarted.
//!
//! Clients are real: IMAP `LOGIN` over implicit TLS, SMTP over implicit TLS, the admin endpoint
//! over HTTP with the bearer token.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;

use crate::harness::{RelayProcess, World, path_str};
use crate::support::postgres::PgCluster;

/// The database every replica and the command line share.
const DATABASE: &str = "relay";

/// What every replica shares: the database, the fakes, the key and the admin token.
pub struct Fleet {
    /// The fakes, the test CA, and the command line's config (on the database).
    pub world: World,
    pub pg: PgCluster,
    /// The state key, base64 (what `M365_RELAY_KEY` holds).
    key: String,
    admin_token: String,
    replicas: Vec<Option<Replica>>,
}

/// One `m365-relay serve` process of the fleet, and the log lines read from it so far.
pub struct Replica {
    process: RelayProcess,
    seen: Mutex<Vec<String>>,
}

impl Fleet {
    /// A started database and the fakes; the command line's config names the database. No
    /// replica runs yet.
    pub async fn new() -> Fleet {
        let pg = tokio::task::spawn_blocking(PgCluster::start)
            .await
            .expect("start PostgreSQL");
        let url = pg.create_database(DATABASE);
        let world = World::new().await;
        world.config_table(&format!(
            "[state]\nbackend = \"postgres\"\nurl = \"{url}\"\npool_size = 4"
        ));
        let key = random_base64(32);
        // The command line reads the key from its file; the replicas from M365_RELAY_KEY.
        write_private(&world.dir.path().join("certs/state.key"), &key);
        Fleet {
            world,
            pg,
            key,
            admin_token: random_base64(32),
            replicas: Vec::new(),
        }
    }

    /// Registers `address` through the command line (`mailbox add`, `mailbox password`,
    /// `mailbox import-token` with a refresh token the fake Entra knows).
    pub fn add_mailbox(&self, address: &str, password: &str) {
        self.world.add_mailbox(address, password);
    }

    /// Starts `count` more replicas; returns the index of the first.
    pub fn start_replicas(&mut self, count: usize) -> usize {
        let first = self.replicas.len();
        for _ in 0..count {
            self.replicas.push(None);
            self.start(self.replicas.len() - 1);
        }
        first
    }

    /// Starts (or starts again) replica `i` in `replica-<i>/`: its own config (the command
    /// line's, every listener on port 0), its own copy of the relay's certificate.
    pub fn start(&mut self, i: usize) {
        self.start_edited(i, |config| config);
    }

    /// Starts `count` more replicas, each reaching Entra through a [`EntraTap`] of its own
    /// (to see which one has a token request in flight); the first index and the taps.
    pub async fn start_tapped_replicas(&mut self, count: usize) -> (usize, Vec<EntraTap>) {
        let first = self.replicas.len();
        let mut taps = Vec::new();
        for _ in 0..count {
            let tap = EntraTap::start(&self.world.entra.authority()).await;
            let (authority, tapped) = (self.world.entra.authority(), tap.authority());
            self.replicas.push(None);
            self.start_edited(self.replicas.len() - 1, |config| {
                config.replace(&authority, &tapped)
            });
            taps.push(tap);
        }
        (first, taps)
    }

    /// [`Fleet::start`] with the config text passed through `edit`.
    pub fn start_edited(&mut self, i: usize, edit: impl FnOnce(String) -> String) {
        let dir = self.world.dir.path().join(format!("replica-{i}"));
        std::fs::create_dir_all(dir.join("certs")).expect("replica folder");
        for file in ["relay.crt", "relay.key"] {
            let from = self.world.dir.path().join("certs").join(file);
            std::fs::copy(from, dir.join("certs").join(file)).expect("copy the certificate");
        }
        let config = std::fs::read_to_string(&self.world.config_path).expect("read config");
        let config = edit(config);
        let config_path = dir.join("relay.toml");
        std::fs::write(&config_path, config).expect("write the replica's config");
        let env = [
            ("M365_RELAY_KEY", self.key.as_str()),
            ("M365_RELAY_ADMIN_TOKEN", self.admin_token.as_str()),
        ];
        let replica = Replica::launch(&config_path, &env);
        self.replicas[i] = Some(replica);
    }

    /// Kills replica `i` with SIGKILL, at once, and reaps it.
    pub fn kill(&mut self, i: usize) {
        let mut replica = self.replicas[i].take().expect("replica running");
        let child = &mut replica.process.child;
        child.kill().expect("SIGKILL the replica");
        child.wait().expect("reap the replica");
    }

    /// The running replicas' indices.
    pub fn running(&self) -> Vec<usize> {
        (0..self.replicas.len())
            .filter(|i| self.replicas[*i].is_some())
            .collect()
    }

    pub fn replica(&self, i: usize) -> &Replica {
        self.replicas[i].as_ref().expect("replica running")
    }

    /// Replica `i`'s port for listener `name`.
    pub fn port(&self, i: usize, name: &str) -> u16 {
        self.replica(i).port(name)
    }

    /// Logs in to replica `i`'s IMAPS listener with `LOGIN`; the tagged reply (`a OK ...`),
    /// or why there was none.
    pub async fn imap_login(&self, i: usize, user: &str, password: &str) -> String {
        imap_login(self.port(i, "imaps"), &self.world, user, password).await
    }

    /// `GET path` on replica `i`'s admin endpoint with the bearer token: status and body.
    pub async fn admin_get(&self, i: usize, path: &str) -> (u16, String) {
        admin_get(self.port(i, "admin"), &self.admin_token, path).await
    }

    /// The value of the sample `series` (e.g. `m365_relay_state_database_reachable{...}`) in
    /// replica `i`'s metrics, if present.
    pub async fn metric(&self, i: usize, prefix: &str) -> Option<f64> {
        let (_, text) = self.admin_get(i, "/metrics").await;
        sample(&text, prefix)
    }

    /// Runs `m365-relay args...` on the database (the command line's config), as an admin on a
    /// third host would; it must succeed. Its output.
    pub fn cli(&self, args: &[&str], stdin: &str) -> String {
        self.world.admin(args, stdin)
    }

    /// `host:port/database` as the relay names the database.
    pub fn database_server(&self) -> String {
        format!("127.0.0.1:{}/{DATABASE}", self.pg.port())
    }

    /// Every replica's log so far, for a failure message.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for (i, replica) in self.replicas.iter().enumerate() {
            if let Some(replica) = replica {
                out.push_str(&format!("--- replica {i}\n{}\n", replica.log_text()));
            }
        }
        out
    }
}

impl Replica {
    fn launch(config: &Path, env: &[(&str, &str)]) -> Replica {
        Replica {
            process: RelayProcess::start_config(config, env),
            seen: Mutex::new(Vec::new()),
        }
    }

    pub fn port(&self, name: &str) -> u16 {
        self.process.port(name)
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        let mut seen = self.seen.lock().unwrap();
        seen.extend(self.process.log.try_iter());
        seen.join("\n")
    }
}

/// How long a client waits for each line: a mail client's patience, not a test's (a login may
/// wait for a dead replica's refresh lease to run out).
pub const CLIENT_PATIENCE: Duration = Duration::from_secs(60);

/// Logs in on the IMAPS `port` with `LOGIN`; the tagged reply, or why there was none.
pub async fn imap_login(port: u16, world: &World, user: &str, password: &str) -> String {
    imap_login_with(port, world.pki.client_config(), user, password).await
}

/// [`imap_login`] with the client's TLS config; never panics on a dead or silent server.
pub async fn imap_login_with(
    port: u16,
    tls: Arc<rustls::ClientConfig>,
    user: &str,
    password: &str,
) -> String {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let attempt = async {
        let tcp: tokio::net::TcpStream =
            tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        let name =
            rustls_pki_types::ServerName::try_from("127.0.0.1").map_err(std::io::Error::other)?;
        let stream = tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await?;
        let mut io = tokio::io::BufReader::new(stream);
        let mut line = String::new();
        if io.read_line(&mut line).await? == 0 {
            return std::io::Result::Ok("closed before the greeting".to_owned());
        }
        let command = format!("a LOGIN {user} \"{password}\"\r\nb LOGOUT\r\n");
        io.get_mut().write_all(command.as_bytes()).await?;
        loop {
            line.clear();
            if io.read_line(&mut line).await? == 0 {
                return Ok("closed".to_owned());
            }
            if line.starts_with("a ") {
                return Ok(line.trim_end().to_owned());
            }
        }
    };
    match tokio::time::timeout(CLIENT_PATIENCE, attempt).await {
        Ok(Ok(reply)) => reply,
        Ok(Err(e)) => format!("connection failed: {e}"),
        Err(_) => format!("no reply within {CLIENT_PATIENCE:?}"),
    }
}

/// `GET path` on the admin endpoint at `port` with `token`: status and body.
pub async fn admin_get(port: u16, token: &str, path: &str) -> (u16, String) {
    let response = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
        .get(format!("http://127.0.0.1:{port}{path}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap_or_else(|e| panic!("admin endpoint {path}: {e}"));
    (response.status().as_u16(), response.text().await.unwrap())
}

/// The value of the first sample line that starts with `prefix`.
pub fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(prefix).and_then(|v| v.trim().parse().ok()))
}

/// Waits up to `within` for `check` to hold, polling every 200 ms; whether it did.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `bytes` random bytes from the system, base64.
fn random_base64(bytes: usize) -> String {
    use std::io::Read;
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("random bytes");
    base64::engine::general_purpose::STANDARD.encode(buf)
}

/// Writes `text` to a new file readable by its owner only.
fn write_private(path: &Path, text: &str) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path_str(path)));
    file.write_all(format!("{text}\n").as_bytes())
        .expect("write the key");
}

/// A TCP forwarder between one replica and the fake Entra (plain HTTP on loopback) that counts
/// the requests it passed on and the responses it passed back: a request in flight is one
/// without its response yet.
pub struct EntraTap {
    addr: std::net::SocketAddr,
    requests: Arc<std::sync::atomic::AtomicUsize>,
    responses: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl EntraTap {
    /// Forwards 127.0.0.1:<new port> to `authority` (`http://127.0.0.1:PORT`).
    pub async fn start(authority: &str) -> EntraTap {
        use std::sync::atomic::AtomicUsize;
        let target: std::net::SocketAddr = authority
            .trim_start_matches("http://")
            .parse()
            .expect("the fake Entra's address");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let responses = Arc::new(AtomicUsize::new(0));
        let (req, resp) = (requests.clone(), responses.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(target).await else {
                    continue;
                };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::spawn(pass(client_read, server_write, "POST ", req.clone()));
                tokio::spawn(pass(server_read, client_write, "HTTP/1.1 ", resp.clone()));
            }
        });
        EntraTap {
            addr,
            requests,
            responses,
            task,
        }
    }

    /// The authority the replica uses instead of the fake Entra's.
    pub fn authority(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Token requests passed on that have not had their response yet.
    pub fn in_flight(&self) -> usize {
        use std::sync::atomic::Ordering::SeqCst;
        self.requests
            .load(SeqCst)
            .saturating_sub(self.responses.load(SeqCst))
    }

    /// Token requests passed on so far.
    pub fn requests(&self) -> usize {
        self.requests.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for EntraTap {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies `from` to `to`, counting the chunks that start a message (`marker`).
async fn pass(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    marker: &'static str,
    count: Arc<std::sync::atomic::AtomicUsize>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let starts = String::from_utf8_lossy(&buf[..n]).matches(marker).count();
        count.fetch_add(starts, std::sync::atomic::Ordering::SeqCst);
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
