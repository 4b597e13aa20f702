//! The IMAP pre-auth state machine (tags, literals, AUTHENTICATE), driven through the line
//! reader by a scripted client.
#![no_main]

mod grammar;

use libfuzzer_sys::fuzz_target;
use m365_relay::protocol::imap::Session;

fuzz_target!(|script: grammar::Script| {
    script.run(Session::new(script.tls, script.auth_allowed));
});
