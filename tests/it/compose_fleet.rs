//! Fleet drift: `deploy/compose-fleet.yml` (two relays, PostgreSQL, HAProxy sending PROXY
//! v2), its relays' config `deploy/fleet.toml` and `deploy/haproxy.cfg` must agree with each
//! other, with the relay and with the first compose file: the same image, user, hardening,
//! health check and stop grace; HAProxy balancing every mail listener over every relay with
//! a PROXY v2 header, from the network the relays accept PROXY from; the database reached
//! by name over verified TLS. `haproxy -c` checks the HAProxy config itself.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use yaml_rust2::{Yaml, YamlLoader};

use crate::deploy::{
    Dockerfile, FD_MARGIN, environment, listeners, mounts, networks, published, read,
    readme_section, scalar, seconds, strings,
};
use crate::kubernetes::{README_SECTION, check_fleet_config, relay_config};
use m365_relay::config::{DATABASE_URL_ENV, DatabaseTls, StateBackend};

const COMPOSE: &str = "deploy/compose-fleet.yml";
const CONFIG: &str = "deploy/fleet.toml";
const HAPROXY: &str = "deploy/haproxy.cfg";
/// The relays, and the balancer under the name of their certificate.
const RELAYS: [&str; 2] = ["relay-1", "relay-2"];
const BALANCER: &str = "relay";
const DATABASE: &str = "postgres";
/// The network of HAProxy, the relays and PostgreSQL.
const FLEET_NETWORK: &str = "fleet";

/// A mapping with its YAML merge key (`<<: *anchor`) applied, as compose applies it.
fn merged(value: &Yaml) -> Yaml {
    let Some(map) = value.as_hash() else {
        return value.clone();
    };
    let mut out = match map.get(&Yaml::String("<<".into())) {
        Some(Yaml::Hash(base)) => base.clone(),
        Some(other) => panic!("<<: a mapping expected, not {other:?}"),
        None => Default::default(),
    };
    for (k, v) in map {
        if k.as_str() != Some("<<") {
            out.insert(k.clone(), v.clone());
        }
    }
    Yaml::Hash(out)
}

fn compose() -> Yaml {
    YamlLoader::load_from_str(&read(COMPOSE))
        .expect("YAML")
        .into_iter()
        .next()
        .expect("one document")
}

fn service(compose: &Yaml, name: &str) -> Yaml {
    let service = merged(&compose["services"][name]);
    assert!(
        service.as_hash().is_some(),
        "{COMPOSE} has no service {name}"
    );
    service
}

fn first_compose_relay() -> Yaml {
    let first = YamlLoader::load_from_str(&read("docker-compose.yml")).unwrap();
    first[0]["services"]["relay"].clone()
}

/// The relays' config as the relay reads it, and its text.
fn fleet_config() -> (m365_relay::config::Config, String) {
    let (_, path) = Dockerfile::load().cmd();
    let text = read(CONFIG);
    let compose = compose();
    let relay = service(&compose, RELAYS[0]);
    let url = environment(&relay)[DATABASE_URL_ENV].replace("${POSTGRES_PASSWORD}", "0123abcd");
    (relay_config(&text, CONFIG, &path, &url, ""), text)
}

/// `haproxy.cfg`'s `listen` sections: name → (bound ports, servers as (name, host, port,
/// options)); and the `default-server` options.
type Listen = (BTreeSet<u16>, Vec<(String, String, u16, Vec<String>)>);

fn haproxy() -> (BTreeMap<String, Listen>, Vec<String>, String) {
    let text = read(HAPROXY);
    let mut sections: BTreeMap<String, Listen> = BTreeMap::new();
    let mut current: Option<String> = None;
    let mut default_server = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap().trim_end();
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.is_empty() {
            continue;
        }
        if !line.starts_with(char::is_whitespace) {
            current = (words[0] == "listen").then(|| words[1].to_owned());
            if let Some(name) = &current {
                sections.insert(name.clone(), Default::default());
            }
            continue;
        }
        match (words[0], &current) {
            ("default-server", _) => {
                default_server = words[1..].iter().map(|w| w.to_string()).collect()
            }
            ("bind", Some(name)) => {
                let port = words[1].rsplit(':').next().unwrap().parse().unwrap();
                sections.get_mut(name).unwrap().0.insert(port);
            }
            ("server", Some(name)) => {
                let (host, port) = words[2].rsplit_once(':').unwrap();
                let options = words[3..].iter().map(|w| w.to_string()).collect();
                sections.get_mut(name).unwrap().1.push((
                    words[1].to_owned(),
                    host.to_owned(),
                    port.parse().unwrap(),
                    options,
                ));
            }
            _ => {}
        }
    }
    (sections, default_server, text)
}

#[test]
fn haproxy_accepts_its_config() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(HAPROXY);
    let out = Command::new("haproxy")
        .arg("-c")
        .arg("-f")
        .arg(&path)
        .output()
        .unwrap_or_else(|e| {
            panic!("haproxy cannot run ({e}): run tests/run.sh, which installs it (Debian haproxy)")
        });
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && text.contains("Configuration file is valid"),
        "{text}"
    );
    // Only the relays' names may be unknown here (they resolve in the compose network).
    for line in text.lines().filter(|l| l.contains("[WARNING]")) {
        assert!(
            RELAYS
                .iter()
                .any(|r| line.contains(&format!("could not resolve address '{r}'"))),
            "haproxy -c: {line}"
        );
    }
}

#[test]
fn the_relays_run_as_the_first_compose_files_relay() {
    let compose = compose();
    let first = merged(&first_compose_relay());
    let config = Dockerfile::load().config();
    for name in RELAYS {
        let relay = service(&compose, name);
        for key in [
            "image",
            "user",
            "command",
            "read_only",
            "cap_drop",
            "security_opt",
        ] {
            assert_eq!(
                relay[key], first[key],
                "{name}: {key} as in docker-compose.yml"
            );
        }
        assert_eq!(
            relay["build"].as_str(),
            Some(".."),
            "{name} builds the checkout's Dockerfile"
        );
        assert_eq!(
            relay["healthcheck"]["test"], first["healthcheck"]["test"],
            "{name}"
        );
        let grace = seconds(relay["stop_grace_period"].as_str().unwrap());
        assert!(
            grace > config.limits.shutdown_grace_secs,
            "{name}: stop_grace_period"
        );
        let nofile = relay["ulimits"]["nofile"]["soft"].as_i64().unwrap() as u64;
        assert!(
            nofile >= 2 * config.limits.max_connections as u64 + FD_MARGIN,
            "{name}"
        );
        // The key is the first compose file's secret, the same file.
        assert_eq!(
            strings(&relay["secrets"]),
            strings(&first["secrets"]),
            "{name}"
        );
        assert!(
            relay["depends_on"][DATABASE]["condition"].as_str() == Some("service_healthy"),
            "{name} waits for the database"
        );
        // Published: the admin endpoint only, on the host's loopback.
        let admin = config.admin.listen.unwrap().port();
        for p in published(&relay) {
            assert_eq!(
                p.container_port, admin,
                "{name} publishes the admin port only"
            );
            assert_eq!(p.host_ip.as_deref(), Some("127.0.0.1"), "{name}");
        }
    }
    // The same key file as the first compose file's (this one's paths are relative to
    // deploy/).
    let secret = strings(&first["secrets"]).remove(0);
    let file = compose["secrets"][secret.as_str()]["file"]
        .as_str()
        .unwrap();
    let first_compose = YamlLoader::load_from_str(&read("docker-compose.yml")).unwrap();
    let first_file = first_compose[0]["secrets"][secret.as_str()]["file"]
        .as_str()
        .unwrap();
    assert_eq!(
        file.strip_prefix("../"),
        first_file.strip_prefix("./"),
        "{file}: the first compose file's {first_file}"
    );
}

#[test]
fn the_relays_read_the_fleet_config_and_write_only_volumes() {
    let compose = compose();
    let (config, text) = fleet_config();
    let (_, config_path) = Dockerfile::load().cmd();
    let (state, _) = check_fleet_config(&config, &text, CONFIG);
    let ca_file = PathBuf::from(state["ca_file"].as_str().expect("[state] ca_file"));

    let mut state_volumes = BTreeSet::new();
    for name in RELAYS {
        let relay = service(&compose, name);
        let mounts = mounts(&relay);
        let at = |path: &Path| {
            mounts
                .iter()
                .filter(|m| path.starts_with(&m.target))
                .max_by_key(|m| m.target.components().count())
                .unwrap_or_else(|| panic!("{name}: {} is mounted from nowhere", path.display()))
        };
        let config_mount = at(&config_path);
        assert_eq!(config_mount.target, config_path);
        assert_eq!(
            config_mount.source,
            format!(
                "./{}",
                Path::new(CONFIG).file_name().unwrap().to_str().unwrap()
            )
        );
        assert!(config_mount.read_only);
        for (what, path) in [
            ("state_dir", config.state_dir.clone()),
            ("tls.cert", config.tls.cert.clone()),
            ("admin.token_file", config.admin.token_file.clone()),
        ] {
            let m = at(&path);
            assert!(
                m.is_named() && !m.read_only,
                "{name}: {what} in a writable named volume"
            );
        }
        // Each relay has its own state folder; certificate and admin token are shared.
        assert!(
            state_volumes.insert(at(&config.state_dir).source.clone()),
            "{name}"
        );
        assert_eq!(at(&config.tls.cert).source, "certs");
        // The database's authority, read-only, from the volume the server's pair is in.
        let ca = at(&ca_file);
        assert!(ca.read_only && ca.is_named(), "{name}: ca_file");
        let server = mounts_of(&compose, DATABASE)
            .into_iter()
            .find(|m| m.source == ca.source)
            .expect("the database mounts the volume of ca_file");
        assert!(server.read_only);
        assert_eq!(relay["read_only"].as_bool(), Some(true));
        for m in &mounts {
            assert!(
                m.read_only || m.is_named(),
                "{name}: {} is a writable host folder",
                m.target.display()
            );
            if m.is_named() {
                assert!(
                    compose["volumes"][m.source.as_str()].as_hash().is_some(),
                    "{}",
                    m.source
                );
            }
        }
        assert_eq!(
            environment(&relay)
                .get("M365_RELAY_CONFIG")
                .map(PathBuf::from),
            Some(config_path.clone())
        );
    }
}

fn mounts_of(compose: &Yaml, name: &str) -> Vec<crate::deploy::Mount> {
    mounts(&service(compose, name))
}

#[test]
fn the_relays_reach_the_database_by_name_with_its_credentials() {
    let compose = compose();
    let database = service(&compose, DATABASE);
    let env = environment(&database);
    for name in RELAYS {
        let relay = service(&compose, name);
        let url = environment(&relay)
            .remove(DATABASE_URL_ENV)
            .unwrap_or_else(|| panic!("{name} sets {DATABASE_URL_ENV}"));
        assert!(
            url.contains(":${POSTGRES_PASSWORD}@"),
            "{name}: the password from `up`'s environment, as the database's"
        );
        let url = url::Url::parse(&url).unwrap_or_else(|e| panic!("{name}: {url}: {e}"));
        assert!(matches!(url.scheme(), "postgres" | "postgresql"));
        assert_eq!(
            url.host_str(),
            Some(DATABASE),
            "{name}: the server's certificate names it"
        );
        assert_eq!(url.port(), Some(5432));
        assert_eq!(url.username(), env["POSTGRES_USER"], "{name}");
        assert_eq!(url.path(), format!("/{}", env["POSTGRES_DB"]), "{name}");
        assert!(
            !networks(&relay).is_disjoint(&networks(&database)),
            "{name}"
        );
    }
    assert_eq!(env["POSTGRES_PASSWORD"], "${POSTGRES_PASSWORD}");
    // The relay takes the URL: TLS verified (the server is not on loopback).
    match fleet_config().0.state {
        StateBackend::Postgres(db) => {
            assert_eq!(db.tls, DatabaseTls::Require);
            assert_eq!(db.server, format!("{DATABASE}:5432/{}", env["POSTGRES_DB"]));
            assert!(db.ca_file.is_some());
        }
        other => panic!("backend {other:?}"),
    }
    assert!(
        published(&database).is_empty(),
        "the database is not published"
    );
    // TLS on, with the pair `postgres-tls` makes for the name the relays use.
    let command = strings(&database["command"]).join(" ");
    assert!(command.contains("ssl=on"), "{command}");
    let tls = service(&compose, "postgres-tls");
    let script = strings(&tls["command"]).join("\n");
    assert!(
        script.contains(&format!("subjectAltName=DNS:{DATABASE}")),
        "{script}"
    );
    assert!(
        script.contains("rm -rf"),
        "the authority's key is thrown away"
    );
    assert_eq!(
        database["depends_on"]["postgres-tls"]["condition"].as_str(),
        Some("service_completed_successfully")
    );
    assert_eq!(
        compose["networks"][FLEET_NETWORK]["internal"].as_bool(),
        Some(true)
    );
}

#[test]
fn haproxy_balances_every_mail_listener_over_every_relay_with_proxy_v2() {
    let compose = compose();
    let (config, text) = fleet_config();
    let (sections, default_server, _) = haproxy();
    assert!(
        default_server.iter().any(|o| o == "send-proxy-v2"),
        "{default_server:?}"
    );
    let admin = config.admin.listen.unwrap().port();
    // Health: the relays' /readyz on the admin port.
    let check_port = default_server
        .iter()
        .position(|o| o == "port")
        .and_then(|i| default_server.get(i + 1))
        .expect("check port");
    assert_eq!(check_port.parse::<u16>().unwrap(), admin);
    assert!(read(HAPROXY).contains("uri /readyz"));

    let mail: BTreeSet<u16> = listeners(&config)
        .iter()
        .filter(|(k, _)| *k != "admin.listen")
        .map(|(_, a)| a.port())
        .collect();
    let mut bound = BTreeSet::new();
    for (name, (binds, servers)) in &sections {
        assert_eq!(binds.len(), 1, "{name}");
        let port = *binds.iter().next().unwrap();
        assert!(mail.contains(&port), "{name}: {port} is no relay listener");
        bound.insert(port);
        let names: BTreeSet<&str> = servers
            .iter()
            .map(|(_, host, _, _)| host.as_str())
            .collect();
        assert_eq!(names, RELAYS.into(), "{name} balances over every relay");
        for (_, host, to, options) in servers {
            assert_eq!(
                *to, port,
                "{name}: {host}:{to}, the relay's listener is {port}"
            );
            assert!(!options.iter().any(|o| o == "no-send-proxy-v2"), "{name}");
        }
    }
    assert_eq!(bound, mail, "HAProxy offers every mail listener");

    // Published: exactly the mail ports, the same numbers.
    let balancer = service(&compose, BALANCER);
    let published: BTreeSet<u16> = published(&balancer)
        .iter()
        .map(|p| p.container_port)
        .collect();
    assert_eq!(published, mail);
    for p in strings(&balancer["ports"]) {
        let parts: Vec<&str> = p.split(':').collect();
        assert_eq!(parts[parts.len() - 2], parts[parts.len() - 1], "{p}");
    }
    let mounted = mounts(&balancer);
    assert!(mounted.iter().any(|m| m.source == "./haproxy.cfg"
        && m.read_only
        && m.target == Path::new("/usr/local/etc/haproxy/haproxy.cfg")));

    // PROXY is accepted from the fleet network, which HAProxy is on and clients are not.
    let (_, from) = check_fleet_config(&config, &text, CONFIG);
    let subnets: Vec<ipnet::IpNet> = compose["networks"][FLEET_NETWORK]["ipam"]["config"]
        .as_vec()
        .expect("the fleet network's subnet is fixed")
        .iter()
        .map(|c| c["subnet"].as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(from, subnets, "proxy_protocol_from is the fleet network");
    assert!(networks(&balancer).contains(FLEET_NETWORK));
    for (name, service) in compose["services"].as_hash().unwrap() {
        let name = scalar(name).unwrap();
        let on_fleet = networks(&merged(service)).contains(FLEET_NETWORK);
        let trusted = name == BALANCER || name == DATABASE || RELAYS.contains(&name.as_str());
        assert!(
            !on_fleet || trusted,
            "{name} is on the fleet network but is no part of it"
        );
    }
}

#[test]
fn clients_reach_the_balancer_under_the_relays_certificate_name() {
    let compose = compose();
    let (config, _) = fleet_config();
    for name in RELAYS {
        let relay = service(&compose, name);
        assert_eq!(
            relay["hostname"].as_str(),
            Some(BALANCER),
            "{name}: its self-signed certificate names {BALANCER}"
        );
    }
    // relay-2 finds relay-1's certificate and admin token (made once, not twice at once).
    assert_eq!(
        service(&compose, RELAYS[1])["depends_on"][RELAYS[0]]["condition"].as_str(),
        Some("service_healthy")
    );
    for host in RELAYS.iter().chain([&BALANCER]) {
        assert!(
            config.admin.allowed_hosts.iter().any(|h| h == host),
            "admin.allowed_hosts has {host}"
        );
    }
    let section = readme_section(README_SECTION);
    for text in [
        COMPOSE,
        "POSTGRES_PASSWORD",
        "send-proxy-v2",
        "relay-1",
        "state status",
    ] {
        assert!(
            section.contains(text),
            "the README's fleet steps show `{text}`"
        );
    }
}
