//! How deep an input went, for `fuzz/depth.sh`: with `M365_FUZZ_DEPTH` set, a target
//! prints one line per input it runs, naming the states it reached (`depth: login
//! starttls`, or `depth: -`). Otherwise it prints nothing.

use std::sync::OnceLock;

fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("M365_FUZZ_DEPTH").is_some())
}

/// Prints the names of the `reached` states that are true.
pub fn report(reached: &[(&str, bool)]) {
    if !enabled() {
        return;
    }
    let names: Vec<&str> = reached
        .iter()
        .filter(|(_, on)| *on)
        .map(|(name, _)| *name)
        .collect();
    let names = if names.is_empty() {
        "-".to_owned()
    } else {
        names.join(" ")
    };
    eprintln!("depth: {names}");
}
