//! A private Postfix (Debian's `postfix` package) for the queue's comparison: its own
//! configuration and queue in a temporary folder, `smtpd` on a free loopback port, every
//! message accepted into its queue (cleanup fsyncs the queue file before `250`, as it
//! always does) and then handed to the `discard` transport. Started as `master -d`, a child
//! of the benchmark, so nothing of the machine's own mail set-up is used or changed.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::client::Result;

const MASTER: &str = "/usr/lib/postfix/sbin/master";

/// The services `master` runs: `smtpd` on `{port}`, the queue's own, nothing chrooted.
const MASTER_CF: &str = "\
{port}   inet  n       -       n       -       -       smtpd
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
";

/// A running private Postfix; stopped when dropped.
pub struct Postfix {
    master: Child,
    pub addr: SocketAddr,
    pub version: String,
}

/// Whether Postfix is installed (`.ci/run` installs it; `apt-get install postfix`).
pub fn installed() -> bool {
    Path::new(MASTER).exists()
}

impl Postfix {
    /// Configures and starts a Postfix under `dir`.
    pub fn start(dir: &Path) -> Result<Postfix> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let etc = dir.join("etc");
        let spool = dir.join("spool");
        std::fs::create_dir_all(&etc)?;
        std::fs::write(etc.join("main.cf"), main_cf(dir))?;
        std::fs::write(
            etc.join("master.cf"),
            MASTER_CF.replace("{port}", &port.to_string()),
        )?;
        make_queue(&spool, &dir.join("data"))?;
        let master = Command::new(MASTER)
            .arg("-c")
            .arg(&etc)
            .arg("-d")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let version = version(&etc);
        let mut postfix = Postfix {
            master,
            addr,
            version,
        };
        postfix.wait_until_up(dir)?;
        Ok(postfix)
    }

    fn wait_until_up(&mut self, dir: &Path) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(self.addr).is_ok() {
                return Ok(());
            }
            if let Some(status) = self.master.try_wait()? {
                let log = std::fs::read_to_string(dir.join("maillog")).unwrap_or_default();
                return Err(format!("postfix master exited ({status}): {log}").into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err("postfix did not start listening within 20 s".into())
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        // SIGTERM: master stops its children, then itself.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.master.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.master.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.master.kill();
        let _ = self.master.wait();
    }
}

fn main_cf(dir: &Path) -> String {
    let d = dir.display();
    format!(
        "compatibility_level = 3.6
queue_directory = {d}/spool
data_directory = {d}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = bench.localdomain
mydomain = localdomain
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
mydestination =
smtpd_relay_restrictions = permit_mynetworks, reject
default_transport = discard:benchmark
relay_transport = discard:benchmark
local_transport = discard:benchmark
maillog_file = {d}/maillog
maillog_file_prefixes = {d}
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
default_process_limit = 100
alias_maps =
alias_database =
biff = no
"
    )
}

/// The queue's folders, owned as `postfix set-permissions` would make them.
fn make_queue(spool: &Path, data: &Path) -> Result<()> {
    let uid = id("-u", "postfix")?;
    let postdrop = id("-g", "postfix").and_then(|_| group("postdrop"))?;
    std::fs::create_dir_all(spool.join("pid"))?;
    std::fs::create_dir_all(data)?;
    std::os::unix::fs::chown(data, Some(uid), None)?;
    for name in [
        "active", "bounce", "corrupt", "defer", "deferred", "flush", "hold", "incoming", "private",
        "saved", "trace",
    ] {
        owned(&spool.join(name), uid, None, 0o700)?;
    }
    owned(&spool.join("maildrop"), uid, Some(postdrop), 0o730)?;
    owned(&spool.join("public"), uid, Some(postdrop), 0o710)?;
    Ok(())
}

fn owned(path: &PathBuf, uid: u32, gid: Option<u32>, mode: u32) -> Result<()> {
    std::fs::create_dir_all(path)?;
    std::os::unix::fs::chown(path, Some(uid), gid)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn id(flag: &str, user: &str) -> Result<u32> {
    let out = Command::new("id").arg(flag).arg(user).output()?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
}

fn group(name: &str) -> Result<u32> {
    let out = Command::new("getent").arg("group").arg(name).output()?;
    let line = String::from_utf8_lossy(&out.stdout).into_owned();
    Ok(line
        .split(':')
        .nth(2)
        .ok_or("no such group")?
        .trim()
        .parse()?)
}

fn version(etc: &Path) -> String {
    Command::new("postconf")
        .arg("-c")
        .arg(etc)
        .arg("-h")
        .arg("mail_version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}
