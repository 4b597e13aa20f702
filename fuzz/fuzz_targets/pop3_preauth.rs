//! The POP3 pre-auth state machine, driven through the line reader by a scripted client.
#![no_main]

mod grammar;

use libfuzzer_sys::fuzz_target;
use m365_relay::protocol::pop3::Session;

fuzz_target!(|script: grammar::Script| {
    script.run(Session::new(script.tls, script.auth_allowed));
});
