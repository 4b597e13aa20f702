//! The SMTP pre-auth state machine, driven through the line reader by a scripted client.
#![no_main]

mod grammar;

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use m365_relay::protocol::smtp::{EXCHANGE_ONLINE_EXTENSIONS, Session};

fuzz_target!(|script: grammar::Script| {
    let extensions: Vec<String> = EXCHANGE_ONLINE_EXTENSIONS
        .iter()
        .map(|s| s.to_string())
        .collect();
    let session = Session::new(
        Arc::from("relay.test"),
        extensions.into(),
        script.tls,
        script.auth_allowed,
    );
    script.run(session);
});
