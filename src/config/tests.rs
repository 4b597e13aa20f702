//! The configuration's tests: the shipped default, refused limits, keys and values.

use std::path::Path;

use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, "test.toml", Path::new("/etc/relay"), None)
}

#[test]
fn the_shipped_default_parses() {
    let config = parse(DEFAULT_CONFIG).unwrap();
    assert_eq!(config.state_dir, Path::new("/etc/relay/state"));
    assert_eq!(config.tls.cert, Path::new("/etc/relay/certs/relay.crt"));
    assert_eq!(config.key_file, Path::new("/etc/relay/certs/state.key"));
    for (section, starttls, tls, upstream) in [
        (
            &config.smtp,
            "127.0.0.1:1587",
            "127.0.0.1:1465",
            "smtp.office365.com:587",
        ),
        (
            &config.imap,
            "127.0.0.1:1143",
            "127.0.0.1:1993",
            "outlook.office365.com:993",
        ),
        (
            &config.pop3,
            "127.0.0.1:1110",
            "127.0.0.1:1995",
            "outlook.office365.com:995",
        ),
    ] {
        assert_eq!(section.listen_starttls, Some(starttls.parse().unwrap()));
        assert_eq!(section.listen_tls, Some(tls.parse().unwrap()));
        assert_eq!(section.upstream.to_string(), upstream);
    }
    assert_eq!(config.entra.authority, "https://login.microsoftonline.com");
    assert!(config.allow_plaintext_on_loopback);
    assert_eq!(config.admin.listen, Some("127.0.0.1:9587".parse().unwrap()));
    assert_eq!(config.limits.shutdown_grace_secs, 30);
    assert_eq!(
        config.limits,
        Limits::default(),
        "the commented file says what the defaults are"
    );
}

#[test]
fn limits_no_client_could_live_with_are_refused() {
    let cases = [
        (
            "max_connections_per_source = 0",
            "limits.max_connections_per_source",
        ),
        ("max_line_smtp = 100", "limits.max_line_smtp"),
        ("max_line_imap = 1000000", "limits.max_line_imap"),
        ("preauth_max_commands = 0", "limits.preauth_max_commands"),
        ("preauth_max_bytes = 4096", "limits.preauth_max_bytes"),
        (
            "idle_timeout_imap_secs = 0",
            "limits.idle_timeout_imap_secs",
        ),
        (
            "login_failures_before_delay = 10",
            "limits.login_failures_before_delay",
        ),
    ];
    for (line, key) in cases {
        let e = parse(&format!("[limits]\n{line}\n")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some(key), "{line}: {e}");
    }
    let e = parse("[limits]\nidle_timeout_secs = 600\n").unwrap_err();
    assert!(e.to_string().contains("idle_timeout_secs"), "{e}");
    let c = parse("[limits]\nmax_line_pop3 = 512\npreauth_max_bytes = 12288\n").unwrap();
    assert_eq!(
        (c.limits.max_line_pop3, c.limits.preauth_max_bytes),
        (512, 12288)
    );
}

#[test]
fn unknown_keys_are_refused_with_file_and_line() {
    let e = parse("[smtp]\nlisten_startls = \"127.0.0.1:25\"\n").unwrap_err();
    let msg = e.to_string();
    assert!(msg.starts_with("test.toml: "), "{msg}");
    assert!(msg.contains("listen_startls"), "{msg}");
    assert!(msg.contains("line 2"), "{msg}");
}

#[test]
fn an_empty_listen_address_turns_the_listener_off() {
    let config = parse("[smtp]\nlisten_tls = \"\"\n").unwrap();
    assert_eq!(config.smtp.listen_tls, None);
    assert!(config.smtp.listen_starttls.is_some());
}

#[test]
fn http_authority_only_on_loopback() {
    for ok in [
        "http://127.0.0.1:8080",
        "http://[::1]:9",
        "http://localhost:1/",
    ] {
        let c = parse(&format!("[entra]\nauthority = \"{ok}\"\n")).unwrap();
        assert!(!c.entra.authority.ends_with('/'));
    }
    let e = parse("[entra]\nauthority = \"http://login.example.com\"\n").unwrap_err();
    assert_eq!(e.key.as_deref(), Some("entra.authority"));
    assert!(e.to_string().contains("must use https"), "{e}");
}

#[test]
fn bad_values_name_their_key() {
    let cases = [
        ("[smtp]\nlisten_tls = \"localhost\"\n", "smtp.listen_tls"),
        (
            "[smtp]\nupstream = \"smtp.office365.com\"\n",
            "smtp.upstream",
        ),
        (
            "[upstream]\nca_file = \"missing.pem\"\n",
            "upstream.ca_file",
        ),
        (
            "[limits]\npreauth_timeout_secs = 0\n",
            "limits.preauth_timeout_secs",
        ),
        ("state_dir = \"\"\n", "state_dir"),
        (
            "[smtp]\nlisten_tls = \"127.0.0.1:1587\"\n",
            "smtp.listen_tls",
        ),
        (
            "[imap]\nlisten_tls = \"127.0.0.1:1587\"\n",
            "imap.listen_tls",
        ),
        (
            "[smtp]\nlisten_tls = \"\"\nlisten_starttls = \"\"\n[imap]\nlisten_tls = \"\"\nlisten_starttls = \"\"\n[pop3]\nlisten_tls = \"\"\nlisten_starttls = \"\"\n",
            "smtp.listen_starttls",
        ),
        ("[pop3]\nupstream = \"pop\"\n", "pop3.upstream"),
    ];
    for (text, key) in cases {
        let e = parse(text).unwrap_err();
        assert_eq!(e.key.as_deref(), Some(key), "{text}: {e}");
        assert!(
            e.to_string().starts_with(&format!("test.toml: `{key}`: ")),
            "{e}"
        );
    }
}

#[test]
fn local_addresses_get_their_own_connection_limit_never_a_lower_one() {
    let mut limits = Limits::default();
    let (local, remote) = ("127.0.0.1".parse().unwrap(), "192.0.2.1".parse().unwrap());
    assert_eq!(limits.max_connections_from(local), 500);
    assert_eq!(
        limits.max_connections_from("::ffff:127.0.0.2".parse().unwrap()),
        500
    );
    assert_eq!(limits.max_connections_from(remote), 20);
    limits.max_connections_per_source = 30_000;
    assert_eq!(limits.max_connections_from(local), 30_000);
    limits.local_networks.clear();
    limits.max_connections_per_source = 20;
    assert_eq!(limits.max_connections_from(local), 20);
}

#[test]
fn server_address_forms() {
    let a = ServerAddress::parse("[::1]:993").unwrap();
    assert_eq!((a.host.as_str(), a.port), ("::1", 993));
    assert_eq!(a.to_string(), "[::1]:993");
    assert!(ServerAddress::parse("host:0").is_err());
    assert!(ServerAddress::parse(":25").is_err());
}

#[test]
fn proxy_protocol_from_lists_networks() {
    assert!(
        parse(DEFAULT_CONFIG)
            .unwrap()
            .proxy_protocol_from
            .is_empty()
    );
    let config = parse("proxy_protocol_from = [\"10.0.0.0/24\", \"2001:db8::5\"]").unwrap();
    assert!(config.is_proxy("10.0.0.7".parse().unwrap()));
    assert!(config.is_proxy("::ffff:10.0.0.7".parse().unwrap()));
    assert!(config.is_proxy("2001:db8::5".parse().unwrap()));
    assert!(!config.is_proxy("10.0.1.7".parse().unwrap()));
    assert!(!config.is_proxy("2001:db8::6".parse().unwrap()));
    for bad in ["10.0.0.1/24", "ten", "10.0.0.0/33"] {
        let err = parse(&format!("proxy_protocol_from = [\"{bad}\"]")).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("proxy_protocol_from"), "{bad}");
    }
}
