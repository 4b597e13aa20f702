//! `m365-relay state migrate | status | export | import` as an administrator runs them, the
//! binary against a real PostgreSQL (`support/postgres.rs`): a files state moved into the
//! database and back comes back equal, sealed all the way (no token or secret in plain text
//! in the database), no target is overwritten without `--force`, an import that fails
//! writes nothing, and `status` says when the database is unreachable.

use std::path::{Path, PathBuf};
use std::process::Output;

use m365_relay::mailbox::{Credential, Registration};
use m365_relay::state::snapshot::Snapshot;
use m365_relay::state::{MailboxStatus, StateKey, TokenState};
use tempfile::TempDir;

use crate::support::postgres::PgCluster;

/// The schema version this relay migrates to.
const LATEST: i32 = m365_relay::state::postgres::schema::LATEST;

const TENANT: &str = "contoso.onmicrosoft.com";
const CLIENT: &str = "11111111-2222-3333-4444-555555555555";
const SECRET: &str = "client-secret-moved-sealed-never-plain";
const ALICE_TOKEN: &str = "0.AXEA-alice-refresh-token-never-plain";
const BOB_TOKEN: &str = "0.AXEA-bob-refresh-token-never-plain";
const PASSWORD: &str = "a local password of alice";

/// An administrator's two configs: the state folder, and the database `database` of `pg`,
/// with one state key.
struct Admin {
    dir: TempDir,
    url: String,
}

impl Admin {
    fn new(pg: &PgCluster, database: &str) -> Admin {
        let url = pg.create_database(database);
        let dir = tempfile::tempdir().unwrap();
        for (name, backend) in [("files.toml", "files"), ("postgres.toml", "postgres")] {
            let config = format!(
                "state_dir = \"{state}\"\nkey_file = \"{key}\"\n[state]\nbackend = \"{backend}\"\n",
                state = dir.path().join("state").display(),
                key = dir.path().join("state.key").display(),
            );
            std::fs::write(dir.path().join(name), config).unwrap();
        }
        Admin { dir, url }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `m365-relay --config <backend>.toml args...`, the database URL in the environment.
    fn run(&self, backend: &str, args: &[&str], stdin: &str) -> Output {
        assert_cmd::Command::cargo_bin("m365-relay")
            .unwrap()
            .arg("--config")
            .arg(self.path(&format!("{backend}.toml")))
            .args(args)
            .env("M365_RELAY_DATABASE_URL", &self.url)
            .env("M365_RELAY_LOG", "warn")
            .env_remove("M365_RELAY_KEY")
            .write_stdin(stdin)
            .output()
            .unwrap()
    }

    /// [`Admin::run`], which must succeed; its standard output.
    fn ok(&self, backend: &str, args: &[&str], stdin: &str) -> String {
        let out = self.run(backend, args, stdin);
        assert!(
            out.status.success(),
            "m365-relay {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn key(&self) -> StateKey {
        StateKey::load_with(None, &self.path("state.key")).unwrap()
    }

    /// What the state folder `dir` holds, read as the relay reads it.
    fn folder(&self, dir: &Path) -> Snapshot {
        Snapshot::read(&m365_relay::state::files::with_key(dir, self.key())).unwrap()
    }

    /// A files state: alice (a confidential app, a password, a token, a status and a Graph
    /// switch), bob (a token) and a shared mailbox using alice's token.
    fn files_state(&self) {
        let secret = self.path("secret");
        std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
        let app = ["--tenant", TENANT, "--client-id", CLIENT];
        let secret_file = ["--client-secret-file", secret.to_str().unwrap()];
        let alice = [
            &["mailbox", "add", "alice@contoso.com"][..],
            &app,
            &secret_file,
        ]
        .concat();
        self.ok("files", &alice, "");
        self.ok(
            "files",
            &[
                "mailbox",
                "add",
                "bob@contoso.com",
                "--tenant",
                TENANT,
                "--client-id",
                CLIENT,
            ],
            "",
        );
        self.ok(
            "files",
            &[
                "mailbox",
                "add",
                "shared@contoso.com",
                "--token-from",
                "alice@contoso.com",
            ],
            "",
        );
        self.ok(
            "files",
            &["mailbox", "password", "alice@contoso.com", "--stdin"],
            &format!("{PASSWORD}\n"),
        );
        for (address, token) in [
            ("alice@contoso.com", ALICE_TOKEN),
            ("bob@contoso.com", BOB_TOKEN),
        ] {
            self.ok(
                "files",
                &["mailbox", "import-token", address],
                &format!("{token}\n"),
            );
        }
        let state = m365_relay::state::files::with_key(&self.path("state"), self.key());
        let status = MailboxStatus {
            state: TokenState::Ok,
            since: Some(1_700_000_000),
            ..MailboxStatus::default()
        };
        state
            .statuses()
            .write("alice@contoso.com", &status)
            .unwrap();
        state
            .switches()
            .switch_to_graph("alice@contoso.com", 1_700_000_500, "535 5.7.139 disabled")
            .unwrap();
    }
}

/// Two snapshots hold the same mailboxes (secrets included), tokens, statuses and switches.
fn assert_same(a: &Snapshot, b: &Snapshot) {
    assert_eq!(a.registry.len(), b.registry.len());
    for mailbox in a.registry.iter() {
        let other = b
            .registry
            .get(&mailbox.address)
            .expect("the same mailboxes");
        assert_eq!(format!("{mailbox:?}"), format!("{other:?}"));
        assert_eq!(
            secret_of(&mailbox.registration),
            secret_of(&other.registration)
        );
    }
    let tokens = |s: &Snapshot| {
        let mut t: Vec<(String, String)> = s
            .tokens
            .iter()
            .map(|(a, t)| (a.clone(), t.expose().to_owned()))
            .collect();
        t.sort();
        t
    };
    assert_eq!(tokens(a), tokens(b));
    assert_eq!(a.statuses, b.statuses);
    assert_eq!(a.switches, b.switches);
}

fn secret_of(registration: &Registration) -> Option<String> {
    match registration {
        Registration::App {
            credential: Credential::Secret { secret, .. },
            ..
        } => Some(secret.expose().to_owned()),
        _ => None,
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_files_state_moves_into_postgres_and_back_unchanged_and_sealed() {
    let pg = PgCluster::start();
    let admin = Admin::new(&pg, "moved");
    admin.files_state();
    let original = admin.folder(&admin.path("state"));
    assert_eq!(original.counts().tokens, 2);
    let status = admin.ok("files", &["state", "status"], "");
    assert!(status.contains("backend: files"), "{status}");
    assert!(
        status.contains("mailboxes: 3") && status.contains("refresh tokens: 2"),
        "{status}"
    );

    let from = admin.path("state");
    let imported = admin.ok(
        "postgres",
        &["state", "import", "--from-dir", from.to_str().unwrap()],
        "",
    );
    assert!(
        imported
            .contains("imported 3 mailboxes, 2 refresh tokens, 1 statuses and 1 route switches"),
        "{imported}"
    );
    let status = admin.ok("postgres", &["state", "status"], "");
    let schema = format!("schema: version {LATEST}");
    for line in [
        "backend: postgres",
        "reachable: yes",
        &schema,
        "mailboxes: 3",
        "refresh tokens: 2",
    ] {
        assert!(status.contains(line), "{line:?} in {status}");
    }
    assert!(
        !status.contains(pg.password()),
        "the database password in {status}"
    );
    let listed = admin.ok("postgres", &["mailbox", "list"], "");
    for address in ["alice@contoso.com", "bob@contoso.com", "shared@contoso.com"] {
        assert!(listed.contains(address), "{address} in {listed}");
    }

    // Sealed in the database: no token, client secret or password in plain text.
    let dump = pg.pg_dump("moved");
    for plain in [ALICE_TOKEN, BOB_TOKEN, SECRET, PASSWORD] {
        assert!(
            !dump.contains(plain),
            "{plain:?} in plain text in the database"
        );
    }
    assert!(dump.contains("xc20p1:"), "sealed values are there");

    // A second import is refused, and changes nothing.
    let again = admin.run(
        "postgres",
        &["state", "import", "--from-dir", from.to_str().unwrap()],
        "",
    );
    assert!(!again.status.success());
    assert!(stderr(&again).contains("--force"), "{}", stderr(&again));
    assert_eq!(pg.psql("moved", "SELECT version FROM registry").trim(), "1");

    let back = admin.path("back");
    admin.ok(
        "postgres",
        &["state", "export", "--to-dir", back.to_str().unwrap()],
        "",
    );
    assert_same(&original, &admin.folder(&back));

    // An export over a state folder needs --force; then it replaces it whole.
    let refused = admin.run(
        "postgres",
        &["state", "export", "--to-dir", back.to_str().unwrap()],
        "",
    );
    assert!(!refused.status.success());
    assert!(stderr(&refused).contains("--force"), "{}", stderr(&refused));
    std::fs::write(back.join("stray"), "left from before").unwrap();
    admin.ok(
        "postgres",
        &[
            "state",
            "export",
            "--to-dir",
            back.to_str().unwrap(),
            "--force",
        ],
        "",
    );
    assert!(!back.join("stray").exists(), "replaced whole");
    assert_same(&original, &admin.folder(&back));

    // --force replaces what the database held: bob and his token are gone.
    admin.ok("files", &["mailbox", "remove", "bob@contoso.com"], "");
    let forced = [
        "state",
        "import",
        "--from-dir",
        from.to_str().unwrap(),
        "--force",
    ];
    admin.ok("postgres", &forced, "");
    let status = admin.ok("postgres", &["state", "status"], "");
    assert!(
        status.contains("mailboxes: 2") && status.contains("refresh tokens: 1"),
        "{status}"
    );
}

#[test]
fn an_import_that_fails_writes_nothing() {
    let pg = PgCluster::start();
    let admin = Admin::new(&pg, "atomic");
    admin.files_state();
    let migrated = admin.ok("postgres", &["state", "migrate"], "");
    let to_latest = format!("from version 0 to {LATEST}");
    assert!(migrated.contains(&to_latest), "{migrated}");
    // The last table the import writes refuses its row.
    pg.psql(
        "atomic",
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN RAISE EXCEPTION 'refused for the test'; END $$; \
         CREATE TRIGGER refuse BEFORE INSERT ON route_switches \
         FOR EACH ROW EXECUTE FUNCTION refuse();",
    );
    let from = admin.path("state");
    let failed = admin.run(
        "postgres",
        &["state", "import", "--from-dir", from.to_str().unwrap()],
        "",
    );
    assert!(!failed.status.success());
    assert!(
        stderr(&failed).contains("refused for the test"),
        "{}",
        stderr(&failed)
    );
    let held = pg.psql(
        "atomic",
        "SELECT (SELECT count(*) FROM registry), (SELECT count(*) FROM refresh_tokens), \
                (SELECT count(*) FROM mailbox_statuses)",
    );
    assert_eq!(held.trim(), "0|0|0", "nothing half-written");
}

#[test]
fn migrate_and_status_show_the_schema_and_an_unreachable_database() {
    let mut pg = PgCluster::start();
    let admin = Admin::new(&pg, "fresh");
    let status = admin.ok("postgres", &["state", "status"], "");
    assert!(status.contains("schema: version 0"), "{status}");
    let migrated = admin.ok("postgres", &["state", "migrate"], "");
    assert!(
        migrated.contains(&format!("migrated from version 0 to {LATEST}")),
        "{migrated}"
    );
    let again = admin.ok("postgres", &["state", "migrate"], "");
    let up_to_date = format!("schema version {LATEST}, up to date");
    assert!(again.contains(&up_to_date), "{again}");
    let status = admin.ok("postgres", &["state", "status"], "");
    assert!(
        status.contains(&format!(
            "schema: version {LATEST} (this relay's: {LATEST})"
        )),
        "{status}"
    );
    assert!(
        status.contains("mailboxes: 0") && status.contains("refresh tokens: 0"),
        "{status}"
    );

    pg.stop();
    let down = admin.run("postgres", &["state", "status"], "");
    assert!(!down.status.success(), "exit 1 when unreachable");
    let (stdout, stderr) = (String::from_utf8_lossy(&down.stdout), stderr(&down));
    assert!(stdout.contains("reachable: no"), "{stdout}");
    assert!(stderr.contains("unreachable"), "{stderr}");
    assert!(!stderr.contains(pg.password()) && !stdout.contains(pg.password()));

    // The files backend has nothing to migrate and says so.
    let files = admin.ok("files", &["state", "migrate"], "");
    assert!(files.contains("nothing to migrate"), "{files}");
}
