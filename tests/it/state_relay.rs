//! The relay itself on the PostgreSQL backend (`[state] backend = "postgres"`), against a
//! real server: mailboxes added and changed by the CLI (another process) reach the running
//! relay at its next login, through the database and its NOTIFY, with no reload; the token
//! the relay redeems comes from the database and its rotation is stored there, sealed.

use std::time::{Duration, Instant};

use crate::harness::World;
use crate::support::postgres::PgCluster;

/// The relay's logins of `address` with `password` answer `OK` within 5 s.
async fn logs_in(world: &World, address: &str, password: &str, expect_ok: bool) {
    let start = Instant::now();
    loop {
        let reply = world.imap_login(address, password).await;
        if reply.starts_with("a OK") == expect_ok {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{address} with {password:?}: {reply}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_on_postgres_serves_what_the_cli_changes_in_the_database() {
    let pg = tokio::task::spawn_blocking(PgCluster::start).await.unwrap();
    let url = pg.create_database("relay");
    let mut world = World::new().await;
    world.config_table(&format!(
        "[state]\nbackend = \"postgres\"\nurl = \"{url}\"\n"
    ));
    world.add_mailbox("alice@contoso.com", "the first password");
    world.start().await;

    logs_in(&world, "alice@contoso.com", "the first password", true).await;
    // Nothing of it in the state folder: the state is in the database.
    assert!(!world.state_dir().join("mailboxes.json").exists());
    assert!(!world.state_dir().join("tokens").exists());

    // A password change by the CLI (another process) reaches the relay at its next login.
    world.set_password("alice@contoso.com", "the second password");
    logs_in(&world, "alice@contoso.com", "the second password", true).await;
    logs_in(&world, "alice@contoso.com", "the first password", false).await;

    // A mailbox added meanwhile logs in too, with no reload.
    world.add_mailbox("bob@contoso.com", "bob's password");
    logs_in(&world, "bob@contoso.com", "bob's password", true).await;

    let dump = pg.pg_dump("relay");
    assert!(
        dump.contains("xc20p1:"),
        "sealed tokens are in the database"
    );
    for plain in ["the second password", "bob's password"] {
        assert!(!dump.contains(plain), "{plain:?} in the database");
    }
    world.stop().await;
}
