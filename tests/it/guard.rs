//! The holes of issue 12 in the login guard and around it, through real sockets: guesses
//! interleaved with the guesser's own logins, guesses sent in parallel, a victim slowed
//! down by guessers elsewhere, strangers that make the relay connect to Microsoft, and a
//! local application held to a remote client's connection limit. Each test prints the
//! figures it measures.

use std::time::{Duration, Instant};

use crate::harness::World;
use crate::limits::{
    ALICE, ALICE_PW, Client, LOCAL, ensure_open_files, imap_login, login_guard, metric, plain_auth,
    timed_plain_auth,
};

const BOB: &str = "bob@contoso.com";
const BOB_PW: &str = "bob's own password";

/// A relay with alice and bob, `limits` added.
async fn world(limits: &str) -> World {
    World::started_after(ALICE, ALICE_PW, |world| {
        world.add_mailbox(BOB, BOB_PW);
        world.imap.set_primary_mailbox(ALICE);
        world.limits(limits);
    })
    .await
}

/// An SMTP client from `source` past EHLO; `None` if the relay refuses the connection.
async fn smtp_from(world: &World, source: [u8; 4]) -> Option<Client> {
    let mut c = Client::plain(source, world.port("smtp")).await;
    if !c.smtp_reply().await.starts_with("220 ") {
        return None;
    }
    assert!(c.smtp("EHLO legacy").await.starts_with("250"));
    Some(c)
}

/// Guesses at `user` from `source` (3 a connection, as the relay closes after 3) until
/// refused or `max` guesses; how many got `535`.
async fn guess(world: &World, source: [u8; 4], user: &str, max: usize) -> usize {
    let mut wrong = 0;
    while wrong < max {
        let Some(mut c) = smtp_from(world, source).await else {
            return wrong;
        };
        for _ in 0..3 {
            let reply = c.smtp(&plain_auth(user, "guess")).await;
            // A wrong password, or the third on a connection (which closes it).
            let checked = reply.starts_with("535 ")
                || reply.starts_with("421 4.7.0 Too many failed authentication attempts");
            if !checked {
                return wrong;
            }
            wrong += 1;
            if wrong == max {
                return wrong;
            }
        }
    }
    wrong
}

/// Logs in to `user` from `source` over SMTP; the reply and how long it took.
async fn log_in(world: &World, source: [u8; 4], user: &str, password: &str) -> (String, Duration) {
    let Some(mut c) = smtp_from(world, source).await else {
        return ("refused".into(), Duration::ZERO);
    };
    timed_plain_auth(&mut c, user, password).await
}

#[tokio::test]
async fn guesses_interleaved_with_the_guessers_own_logins_still_get_it_refused() {
    let world = world(&login_guard(3, 5, 1)).await;
    let mallory = [127, 0, 0, 7];
    let alone = guess(&world, [127, 0, 0, 8], ALICE, 36).await;
    let mut guesses = 0;
    while guesses < 36 {
        // Mallory's own mailbox, between every 3 guesses at alice's.
        let (reply, _) = log_in(&world, mallory, BOB, BOB_PW).await;
        if !reply.starts_with("235 ") {
            break;
        }
        let made = guess(&world, mallory, ALICE, 3).await;
        guesses += made;
        if made < 3 {
            break;
        }
    }
    eprintln!(
        "figures: guesses at one mailbox from one address per window: {alone} alone, \
         {guesses} with a login to the guesser's own mailbox every 3 guesses \
         (login_failures_before_block = 5)"
    );
    assert_eq!(alone, 5);
    assert_eq!(guesses, 5, "the own logins forgave nothing");
}

#[tokio::test]
async fn sixteen_parallel_guesses_are_counted_as_they_start_and_wait_in_turn() {
    let world = world("login_delay_max_secs = 1").await;
    let source = [127, 0, 0, 9];
    let mut clients = Vec::new();
    for _ in 0..16 {
        clients.push(smtp_from(&world, source).await.expect("admitted"));
    }
    let started = Instant::now();
    let guesses = clients.iter_mut().map(|c| async move {
        let reply = c.smtp(&plain_auth(ALICE, "guess")).await;
        (reply, started.elapsed())
    });
    let replies = futures::future::join_all(guesses).await;
    let took = started.elapsed();
    let checked = replies
        .iter()
        .filter(|(r, _)| r.starts_with("535 "))
        .count();
    let refused = replies
        .iter()
        .filter(|(r, _)| r.starts_with("421 "))
        .count();
    let delayed = metric(&world, "m365_relay_logins_delayed_total{protocol=\"smtp\"}");
    eprintln!(
        "figures: 16 parallel guesses: {checked} checked, {refused} refused, {delayed} waited; \
         the last verdict after {took:?} (login_delay_max_secs = 1; 63 s of waits with the \
         default 16)"
    );
    assert_eq!((checked, refused), (10, 6), "{replies:?}");
    assert_eq!(delayed, 7);
    assert!(took >= Duration::from_secs(7), "the waits add up: {took:?}");
}

#[tokio::test]
async fn the_victims_usual_client_is_not_slowed_down_by_guessers_elsewhere() {
    let world = world(&login_guard(3, 4, 2)).await;
    let usual = [127, 0, 0, 6];
    assert!(
        log_in(&world, usual, ALICE, ALICE_PW)
            .await
            .0
            .starts_with("235 ")
    );
    let made: usize = [[127, 0, 0, 3], [127, 0, 0, 4]]
        .map(|attacker| guess(&world, attacker, ALICE, 16))
        .into_iter()
        .collect::<futures::future::JoinAll<_>>()
        .await
        .into_iter()
        .sum();
    let (reply, victim) = log_in(&world, usual, ALICE, ALICE_PW).await;
    assert!(reply.starts_with("235 "), "{reply}");
    let (reply, stranger) = log_in(&world, [127, 0, 0, 10], ALICE, ALICE_PW).await;
    assert!(reply.starts_with("235 "), "{reply}");
    eprintln!(
        "figures: after {made} guesses at alice from two addresses, alice's correct login \
         took {victim:?} from her usual address and {stranger:?} from a new one"
    );
    assert!(victim < Duration::from_millis(900), "{victim:?}");
    assert!(stranger >= Duration::from_secs(2), "{stranger:?}");
}

#[tokio::test]
async fn strangers_that_connect_and_leave_make_no_upstream_connection() {
    let world = world("").await;
    for _ in 0..50 {
        let mut c = Client::plain(LOCAL, world.port("imap")).await;
        assert!(c.expect_line().await.starts_with("* OK"));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let strangers = world.imap.connections();
    eprintln!("figures: 50 connect-then-close cycles opened {strangers} upstream connections");
    assert_eq!(strangers, 0);
    // After a login, the address is known: its next connection is prepared at once.
    let (mut c, _) = imap_login(world.port("imap"), LOCAL, None).await;
    c.imap("z", "LOGOUT").await;
    let mut c = Client::plain(LOCAL, world.port("imap")).await;
    c.expect_line().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while world.imap.connections() < 2 {
        assert!(Instant::now() < deadline, "no speculative connection");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        metric(&world, "m365_relay_speculative_connections_total"),
        1
    );
    world.check_fakes();
}

#[tokio::test]
async fn a_local_application_gets_its_own_connection_limit() {
    let world = world("").await;
    let mut held = Vec::new();
    for _ in 0..40 {
        let mut c = Client::plain(LOCAL, world.port("smtp")).await;
        let greeting = c.smtp_reply().await;
        assert!(greeting.starts_with("220 "), "{greeting}");
        held.push(c);
    }
    // 200 IMAP logins at once, on top.
    ensure_open_files(2000);
    let started = Instant::now();
    let port = world.port("imap");
    let logins = (0..200).map(|_| imap_login(port, LOCAL, None));
    let sessions = futures::future::join_all(logins).await;
    eprintln!(
        "figures: 40 local connections held and 200 simultaneous local IMAP logins, all \
         served; the logins took {:?}",
        started.elapsed()
    );
    assert_eq!(sessions.len(), 200);
    world.check_fakes();
}
