//! What a private PostgreSQL cluster of the tests (`postgres.rs`) needs from this machine: the
//! server programs (Debian's `postgresql` package, else `PATH`), and whether to run them as the
//! `postgres` system user (when the tests run as root, which initdb and pg_ctl refuse).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The folder with `initdb`, `pg_ctl` and `postgres`: Debian's newest installed major version,
/// else the folder of `pg_ctl` on `PATH`.
pub fn server_binaries() -> PathBuf {
    let debian = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let major: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            has_server(&bin).then_some((major, bin))
        })
        .max_by_key(|(major, _)| *major)
        .map(|(_, bin)| bin);
    let on_path = || {
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .find(|dir| has_server(dir))
    };
    debian.or_else(on_path).unwrap_or_else(|| {
        panic!(
            "PostgreSQL's server programs (initdb, pg_ctl, postgres) were found neither in \
             /usr/lib/postgresql/<version>/bin nor on PATH. The tests need a real PostgreSQL: \
             run them with tests/run.sh, which installs Debian's postgresql package first."
        )
    })
}

fn has_server(dir: &Path) -> bool {
    ["initdb", "pg_ctl", "postgres"]
        .iter()
        .all(|p| dir.join(p).is_file())
}

/// Whether this process runs as root (the owner of /proc/self is the effective user).
pub fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// The uid and gid of system user `name`, from /etc/passwd.
pub fn system_user(name: &str) -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    passwd
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.first() == Some(&name) && fields.len() > 3)
                .then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))
                .flatten()
        })
        .unwrap_or_else(|| {
            panic!(
                "the tests run as root, and initdb refuses root: they run PostgreSQL as the \
                 `{name}` system user, which does not exist. Run the tests with tests/run.sh \
                 (Debian's postgresql package creates it)."
            )
        })
}
