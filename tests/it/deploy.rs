//! Deployment drift: the `Dockerfile`, `docker-compose.yml`, `.dockerignore`, the systemd unit
//! `config/m365-relay.service`, the container's config `config/docker.toml` and the README's
//! "Deployment" section must agree with each other and with the relay. No container engine
//! or systemd runs here, so the files are parsed and compared: ports, paths, users, the
//! health check, stop timeouts and descriptor limits.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use m365_relay::config::{Config, Limits};
use yaml_rust2::{Yaml, YamlLoader};

/// The config file of the container, in the checkout.
const CONTAINER_CONFIG: &str = "config/docker.toml";
/// The systemd unit, in the checkout.
const UNIT: &str = "config/m365-relay.service";
/// The compose service of the relay.
const RELAY: &str = "relay";
/// Descriptors a relay needs beyond two per session (listeners, files, the admin endpoint).
pub(crate) const FD_MARGIN: u64 = 64;

pub(crate) fn read(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

// === the Dockerfile ===

/// One build stage: its base image (build arguments expanded) and its instructions.
#[derive(Debug)]
pub(crate) struct Stage {
    from: String,
    name: Option<String>,
    /// (KEYWORD, arguments), continuation lines joined, comments dropped.
    instructions: Vec<(String, String)>,
}

impl Stage {
    fn all(&self, keyword: &str) -> Vec<&str> {
        self.instructions
            .iter()
            .filter(|(k, _)| k == keyword)
            .map(|(_, a)| a.as_str())
            .collect()
    }

    fn one(&self, keyword: &str) -> &str {
        let all = self.all(keyword);
        assert_eq!(
            all.len(),
            1,
            "stage {:?}: one {keyword} expected",
            self.name
        );
        all[0]
    }

    /// The `&&`-separated commands of every RUN.
    fn run_commands(&self) -> Vec<String> {
        self.all("RUN")
            .iter()
            .flat_map(|run| run.split("&&"))
            .map(|c| c.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect()
    }

    /// COPY instructions as (flags, sources, destination).
    fn copies(&self) -> Vec<(Vec<String>, Vec<String>, String)> {
        self.all("COPY")
            .iter()
            .map(|args| {
                let words: Vec<String> = args.split_whitespace().map(str::to_owned).collect();
                let (flags, rest): (Vec<_>, Vec<_>) =
                    words.into_iter().partition(|w| w.starts_with("--"));
                let (dest, sources) = rest.split_last().expect("COPY needs a destination");
                (flags, sources.to_vec(), dest.clone())
            })
            .collect()
    }

    /// `ENV` values by name (the `KEY=VALUE` form).
    fn env(&self) -> BTreeMap<String, String> {
        self.all("ENV")
            .iter()
            .flat_map(|args| args.split_whitespace())
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned()))
            .collect()
    }
}

pub(crate) struct Dockerfile {
    stages: Vec<Stage>,
}

impl Dockerfile {
    pub(crate) fn load() -> Self {
        Self::parse(&read("Dockerfile"))
    }

    fn parse(text: &str) -> Self {
        let mut logical = Vec::new();
        let mut current = String::new();
        for line in text.lines() {
            let trimmed = line.trim();
            if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
                continue;
            }
            match trimmed.strip_suffix('\\') {
                Some(part) => {
                    current.push_str(part);
                    current.push(' ');
                }
                None => {
                    current.push_str(trimmed);
                    logical.push(std::mem::take(&mut current));
                }
            }
        }
        assert!(
            current.trim().is_empty(),
            "Dockerfile ends in a continuation"
        );

        let mut args = BTreeMap::new();
        let mut stages: Vec<Stage> = Vec::new();
        for line in logical {
            let (keyword, rest) = line.split_once(char::is_whitespace).unwrap_or((&line, ""));
            let keyword = keyword.to_ascii_uppercase();
            let rest = rest.trim().to_owned();
            match keyword.as_str() {
                "ARG" if stages.is_empty() => {
                    let (k, v) = rest.split_once('=').unwrap_or((&rest, ""));
                    args.insert(k.to_owned(), v.to_owned());
                }
                "FROM" => {
                    let mut from = rest.clone();
                    for (k, v) in &args {
                        from = from.replace(&format!("${{{k}}}"), v);
                    }
                    assert!(
                        !from.contains('$'),
                        "unexpanded build argument in FROM {rest}"
                    );
                    let words: Vec<&str> = from.split_whitespace().collect();
                    let name = match words.as_slice() {
                        [_, as_, name] if as_.eq_ignore_ascii_case("as") => {
                            Some((*name).to_owned())
                        }
                        [_] => None,
                        _ => panic!("cannot read FROM {from}"),
                    };
                    stages.push(Stage {
                        from: words[0].to_owned(),
                        name,
                        instructions: Vec::new(),
                    });
                }
                _ => stages
                    .last_mut()
                    .unwrap_or_else(|| panic!("{keyword} before FROM"))
                    .instructions
                    .push((keyword, rest)),
            }
        }
        Self { stages }
    }

    fn builder(&self) -> &Stage {
        assert!(self.stages.len() >= 2, "a multi-stage build is expected");
        &self.stages[0]
    }

    pub(crate) fn runtime(&self) -> &Stage {
        self.stages.last().expect("a stage")
    }

    /// `USER uid:gid` of the runtime stage, as numbers.
    pub(crate) fn user(&self) -> (u32, u32) {
        let user = self.runtime().one("USER");
        let (uid, gid) = user
            .split_once(':')
            .unwrap_or_else(|| panic!("USER {user}: numeric uid:gid expected"));
        let number = |s: &str| {
            s.parse::<u32>()
                .unwrap_or_else(|_| panic!("USER {user}: numeric uid:gid expected"))
        };
        (number(uid), number(gid))
    }

    /// The runtime's `CMD` and the config file it names after `--config`.
    /// The container's config, from the path its CMD names.
    pub(crate) fn config(&self) -> Config {
        container_config(&self.cmd().1)
    }

    pub(crate) fn cmd(&self) -> (Vec<String>, PathBuf) {
        let cmd = json_array(self.runtime().one("CMD"));
        let config = cmd
            .iter()
            .position(|a| a == "--config")
            .and_then(|i| cmd.get(i + 1))
            .expect("CMD passes --config FILE");
        (cmd.clone(), PathBuf::from(config))
    }

    /// The runtime's `HEALTHCHECK` command (exec form).
    fn healthcheck(&self) -> Vec<String> {
        let healthcheck = self.runtime().one("HEALTHCHECK");
        let (_, cmd) = healthcheck
            .split_once("CMD ")
            .expect("HEALTHCHECK ... CMD [...]");
        json_array(cmd)
    }

    fn volumes(&self) -> BTreeSet<PathBuf> {
        self.runtime()
            .all("VOLUME")
            .iter()
            .flat_map(|v| {
                if v.trim_start().starts_with('[') {
                    json_array(v)
                } else {
                    v.split_whitespace().map(str::to_owned).collect()
                }
            })
            .map(PathBuf::from)
            .collect()
    }

    fn exposed_ports(&self) -> BTreeSet<u16> {
        self.runtime()
            .all("EXPOSE")
            .iter()
            .flat_map(|e| e.split_whitespace())
            .map(|p| {
                p.trim_end_matches("/tcp")
                    .parse()
                    .unwrap_or_else(|_| panic!("EXPOSE {p}: a TCP port expected"))
            })
            .collect()
    }
}

fn json_array(text: &str) -> Vec<String> {
    serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("{text}: the exec form (a JSON array) expected: {e}"))
}

// === docker-compose.yml ===

fn compose() -> Yaml {
    YamlLoader::load_from_str(&read("docker-compose.yml"))
        .expect("docker-compose.yml is YAML")
        .into_iter()
        .next()
        .expect("one YAML document")
}

fn service<'a>(compose: &'a Yaml, name: &str) -> &'a Yaml {
    let service = &compose["services"][name];
    assert!(
        service.as_hash().is_some(),
        "docker-compose.yml has no service {name}"
    );
    service
}

/// A scalar as text (compose lets numbers stand for strings in many places).
pub(crate) fn scalar(value: &Yaml) -> Option<String> {
    match value {
        Yaml::String(s) | Yaml::Real(s) => Some(s.clone()),
        Yaml::Integer(i) => Some(i.to_string()),
        Yaml::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

pub(crate) fn strings(value: &Yaml) -> Vec<String> {
    match value {
        Yaml::Array(items) => items
            .iter()
            .map(|i| scalar(i).expect("a list of scalars"))
            .collect(),
        Yaml::BadValue => Vec::new(),
        other => vec![scalar(other).expect("a scalar or a list")],
    }
}

/// A service's `environment`, as a map or as a `KEY=VALUE` list.
pub(crate) fn environment(service: &Yaml) -> BTreeMap<String, String> {
    match &service["environment"] {
        Yaml::Hash(map) => map
            .iter()
            .map(|(k, v)| {
                (
                    scalar(k).expect("a variable name"),
                    scalar(v).unwrap_or_default(),
                )
            })
            .collect(),
        list => strings(list)
            .iter()
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                (k.to_owned(), v.to_owned())
            })
            .collect(),
    }
}

/// A volume in the short syntax: `source:target[:mode]`.
#[derive(Debug)]
pub(crate) struct Mount {
    pub(crate) source: String,
    pub(crate) target: PathBuf,
    pub(crate) read_only: bool,
}

impl Mount {
    /// A named volume (not a path on the host).
    pub(crate) fn is_named(&self) -> bool {
        !self.source.contains('/') && !self.source.starts_with('.') && !self.source.starts_with('~')
    }
}

pub(crate) fn mounts(service: &Yaml) -> Vec<Mount> {
    strings(&service["volumes"])
        .iter()
        .map(|v| {
            let parts: Vec<&str> = v.split(':').collect();
            match parts.as_slice() {
                [source, target] => Mount {
                    source: (*source).to_owned(),
                    target: PathBuf::from(target),
                    read_only: false,
                },
                [source, target, mode] => Mount {
                    source: (*source).to_owned(),
                    target: PathBuf::from(target),
                    read_only: mode.split(',').any(|m| m == "ro"),
                },
                _ => panic!("volume {v}: source:target[:mode] expected"),
            }
        })
        .collect()
}

/// A published port in the short syntax: `[host_ip:]host_port:container_port[/tcp]`.
#[derive(Debug)]
pub(crate) struct Published {
    pub(crate) host_ip: Option<String>,
    pub(crate) container_port: u16,
}

pub(crate) fn published(service: &Yaml) -> Vec<Published> {
    strings(&service["ports"])
        .iter()
        .map(|p| {
            let parts: Vec<&str> = p.trim_end_matches("/tcp").split(':').collect();
            let port = |s: &str| {
                s.parse::<u16>()
                    .unwrap_or_else(|_| panic!("port {p}: [host_ip:]host:container expected"))
            };
            match parts.as_slice() {
                [ip, _host, container] => Published {
                    host_ip: Some((*ip).to_owned()),
                    container_port: port(container),
                },
                [_host, container] => Published {
                    host_ip: None,
                    container_port: port(container),
                },
                [container] => Published {
                    host_ip: None,
                    container_port: port(container),
                },
                _ => panic!("port {p}: [host_ip:]host:container expected"),
            }
        })
        .collect()
}

pub(crate) fn networks(service: &Yaml) -> BTreeSet<String> {
    match &service["networks"] {
        Yaml::Hash(map) => map.keys().filter_map(scalar).collect(),
        Yaml::BadValue => ["default".to_owned()].into(),
        list => strings(list).into_iter().collect(),
    }
}

/// Seconds in a duration such as `45s`, `1m30s`, `2min` or `45` (seconds).
pub(crate) fn seconds(text: &str) -> u64 {
    let text = text.trim();
    if let Ok(s) = text.parse() {
        return s;
    }
    let mut total = 0;
    let mut number = String::new();
    let mut unit = String::new();
    let mut flush = |number: &mut String, unit: &mut String| {
        if number.is_empty() {
            return;
        }
        let n: u64 = number.parse().unwrap();
        total += match unit.as_str() {
            "h" => n * 3600,
            "m" | "min" => n * 60,
            "s" | "" => n,
            other => panic!("duration {text}: unit {other} not understood"),
        };
        number.clear();
        unit.clear();
    };
    for c in text.chars() {
        if c.is_ascii_digit() {
            if !unit.is_empty() {
                flush(&mut number, &mut unit);
            }
            number.push(c);
        } else if !c.is_whitespace() {
            unit.push(c);
        }
    }
    flush(&mut number, &mut unit);
    total
}

// === the systemd unit ===

/// `[Section]` → key → the values in order (a key may repeat; an empty value resets it).
type Unit = BTreeMap<(String, String), Vec<String>>;

fn unit() -> Unit {
    let mut unit = Unit::new();
    let mut section = String::new();
    for line in read(UNIT).lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
            continue;
        }
        assert!(
            !line.ends_with('\\'),
            "{UNIT}: no continuation lines expected"
        );
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("{UNIT}: `{line}` is not key=value"));
        unit.entry((section.clone(), key.trim().to_owned()))
            .or_default()
            .push(value.trim().to_owned());
    }
    unit
}

/// The last value of `[Service] key`.
fn service_value<'a>(unit: &'a Unit, key: &str) -> &'a str {
    unit.get(&("Service".to_owned(), key.to_owned()))
        .and_then(|v| v.last())
        .unwrap_or_else(|| panic!("{UNIT}: [Service] {key}= missing"))
}

/// The unit's config file (from `ExecStart`).
fn unit_config_path(unit: &Unit) -> PathBuf {
    let exec: Vec<&str> = service_value(unit, "ExecStart")
        .split_whitespace()
        .collect();
    let i = exec
        .iter()
        .position(|a| *a == "--config")
        .expect("ExecStart passes --config FILE");
    PathBuf::from(exec[i + 1])
}

// === the configs ===

/// The container's config, read as the relay in the container reads it: from `path`.
fn container_config(path: &Path) -> Config {
    Config::parse(
        &read(CONTAINER_CONFIG),
        CONTAINER_CONFIG,
        path.parent().expect("a folder"),
        Some(path.to_owned()),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

pub(crate) fn listeners(config: &Config) -> Vec<(&'static str, SocketAddr)> {
    [
        ("smtp.listen_starttls", config.smtp.listen_starttls),
        ("smtp.listen_tls", config.smtp.listen_tls),
        ("imap.listen_starttls", config.imap.listen_starttls),
        ("imap.listen_tls", config.imap.listen_tls),
        ("pop3.listen_starttls", config.pop3.listen_starttls),
        ("pop3.listen_tls", config.pop3.listen_tls),
        ("admin.listen", config.admin.listen),
    ]
    .into_iter()
    .filter_map(|(k, a)| a.map(|a| (k, a)))
    .collect()
}

pub(crate) fn ports(config: &Config) -> BTreeSet<u16> {
    listeners(config).iter().map(|(_, a)| a.port()).collect()
}

/// A section of README.md: from its heading to the next heading of the same or a higher level.
pub(crate) fn readme_section(heading: &str) -> String {
    let readme = read("README.md");
    let level = heading.chars().take_while(|c| *c == '#').count();
    let mut lines = readme.lines().skip_while(|l| l.trim_end() != heading);
    let first = lines
        .next()
        .unwrap_or_else(|| panic!("README.md has no `{heading}`"));
    let mut section = vec![first];
    let mut in_code = false;
    for line in lines {
        if line.starts_with("```") {
            in_code = !in_code;
        }
        let hashes = line.chars().take_while(|c| *c == '#').count();
        if !in_code && hashes > 0 && hashes <= level && line[hashes..].starts_with(' ') {
            break;
        }
        section.push(line);
    }
    section.join("\n")
}

/// The config of the README's systemd install: the default, with the paths the README sets.
fn systemd_config(unit: &Unit) -> Config {
    let section = readme_section("### As a systemd service");
    let snippet: String = section
        .split("```toml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("the systemd section shows the config's paths in a ```toml block")
        .to_owned();
    let path = unit_config_path(unit);
    Config::parse(
        &snippet,
        "README.md (systemd)",
        path.parent().unwrap(),
        Some(path.clone()),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// What a `.dockerignore` of plain names and `*` leaves out of the build context.
fn docker_ignores(path: &str) -> bool {
    let patterns: Vec<String> = read(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    let mut ignored = false;
    for pattern in &patterns {
        let (negated, pattern) = match pattern.strip_prefix('!') {
            Some(p) => (true, p.trim_end_matches('/')),
            None => (false, pattern.trim_end_matches('/')),
        };
        assert!(
            pattern == "*" || !pattern.contains(['*', '?', '[']),
            ".dockerignore: this test only understands `*` and plain names, not {pattern}"
        );
        let matches = pattern == "*" || path == pattern || path.starts_with(&format!("{pattern}/"));
        if matches {
            ignored = !negated;
        }
    }
    ignored
}

// === the tests ===

#[test]
fn the_image_builds_with_the_crates_rust_on_the_runtimes_debian() {
    let dockerfile = Dockerfile::load();
    let builder = dockerfile.builder();
    let runtime = dockerfile.runtime();

    // rust:X.Y.Z-<release>, at least the crate's rust-version.
    let manifest: toml::Table = toml::from_str(&read("Cargo.toml")).unwrap();
    let rust_version = manifest["package"]["rust-version"].as_str().unwrap();
    let (image, tag) = builder
        .from
        .split_once(':')
        .expect("a tagged builder image");
    assert_eq!(image, "rust", "builder {}", builder.from);
    let (version, release) = tag.split_once('-').expect("rust:VERSION-RELEASE");
    let parse = |v: &str| -> Vec<u32> { v.split('.').map(|n| n.parse().unwrap()).collect() };
    assert!(
        parse(version) >= parse(rust_version),
        "builder rust {version} is older than rust-version {rust_version}"
    );

    // The runtime is the same Debian release (glibc), slim.
    assert_eq!(
        runtime.from,
        format!("debian:{release}-slim"),
        "the runtime must be Debian slim of the builder's release ({release})"
    );

    // Dependencies are built before the sources are copied, with the lock file honoured.
    let builds: Vec<usize> = builder
        .instructions
        .iter()
        .enumerate()
        .filter(|(_, (k, a))| k == "RUN" && a.contains("cargo build --release --locked"))
        .map(|(i, _)| i)
        .collect();
    let copy_src = builder
        .instructions
        .iter()
        .position(|(k, a)| k == "COPY" && a.split_whitespace().any(|w| w == "src" || w == "src/"))
        .expect("the builder copies src");
    assert_eq!(
        builds.len(),
        2,
        "two `cargo build --release --locked`: dependencies, then the relay"
    );
    assert!(builds[0] < copy_src && copy_src < builds[1]);

    // ca-certificates for the token endpoint's TLS (the OS trust store).
    assert!(
        runtime
            .run_commands()
            .iter()
            .any(|c| c.contains("apt-get install") && c.contains("ca-certificates")),
        "the runtime installs ca-certificates"
    );

    // The binary on the PATH, run as the entry point.
    assert!(
        runtime.copies().iter().any(|(flags, _, dest)| {
            flags.iter().any(|f| f == "--from=builder") && dest == "/usr/local/bin/m365-relay"
        }),
        "the runtime copies the binary from the builder to /usr/local/bin/m365-relay"
    );
    assert_eq!(json_array(runtime.one("ENTRYPOINT")), ["m365-relay"]);
}

#[test]
fn the_image_runs_as_a_fixed_unprivileged_user() {
    let dockerfile = Dockerfile::load();
    let (uid, gid) = dockerfile.user();
    assert!(uid != 0 && gid != 0, "USER must not be root");
    let commands = dockerfile.runtime().run_commands();
    assert!(
        commands
            .iter()
            .any(|c| c.starts_with("useradd") && c.contains(&format!("--uid {uid}"))),
        "the runtime creates the user with uid {uid}"
    );
    assert!(
        commands
            .iter()
            .any(|c| c.starts_with("groupadd") && c.contains(&format!("--gid {gid}"))),
        "the runtime creates the group with gid {gid}"
    );

    let compose = compose();
    let relay = service(&compose, RELAY);
    assert_eq!(
        relay["user"].as_str(),
        Some(format!("{uid}:{gid}").as_str()),
        "compose runs the relay as the image's user"
    );
    // The secret file must belong to that user on the host.
    let chown = format!("chown {uid}:{gid} ");
    assert!(read("docker-compose.yml").contains(&chown));
    assert!(readme_section("### As a container sidecar (docker compose)").contains(&chown));
}

#[test]
fn image_and_compose_serve_with_the_container_config() {
    let dockerfile = Dockerfile::load();
    let runtime = dockerfile.runtime();
    let (cmd, config_path) = dockerfile.cmd();
    assert_eq!(
        cmd.last().map(String::as_str),
        Some("serve"),
        "CMD runs serve"
    );
    assert!(config_path.is_absolute());
    assert_eq!(
        runtime.env().get("M365_RELAY_CONFIG").map(PathBuf::from),
        Some(config_path.clone()),
        "ENV M365_RELAY_CONFIG names the config of CMD (for `docker compose run ... mailbox`)"
    );
    assert!(
        runtime.copies().iter().any(|(flags, sources, dest)| {
            !flags.iter().any(|f| f.starts_with("--from"))
                && sources == &[CONTAINER_CONFIG]
                && Path::new(dest) == config_path
        }),
        "the image holds {CONTAINER_CONFIG} at {}",
        config_path.display()
    );

    let compose = compose();
    let relay = service(&compose, RELAY);
    assert_eq!(relay["build"].as_str(), Some("."));
    let command = strings(&relay["command"]);
    assert!(
        command.is_empty() || command == cmd,
        "compose's command {command:?} differs from CMD {cmd:?}"
    );
    if let Some(env) = environment(relay).get("M365_RELAY_CONFIG") {
        assert_eq!(Path::new(env), config_path);
    }
    let config_mount = mounts(relay)
        .into_iter()
        .find(|m| m.target == config_path)
        .expect("compose mounts the config");
    assert_eq!(config_mount.source, format!("./{CONTAINER_CONFIG}"));
    assert!(config_mount.read_only, "the config is mounted read-only");
}

#[test]
fn the_container_config_is_valid_and_listens_beyond_loopback() {
    let config = Dockerfile::load().config();
    let listeners = listeners(&config);
    assert_eq!(
        listeners.len(),
        7,
        "every mail listener and the admin endpoint are on"
    );
    for (key, addr) in &listeners {
        assert!(
            addr.ip().is_unspecified(),
            "{key} = {addr}: in a container a listener must bind all addresses, not loopback"
        );
        assert!(
            addr.port() >= 1024,
            "{key} = {addr}: the container's user has no capability to bind below 1024"
        );
    }
    assert!(
        !config.allow_plaintext_on_loopback,
        "in a container, plaintext \"from loopback\" proves nothing (port forwarders)"
    );
}

#[test]
fn exposed_and_published_ports_are_the_listen_ports() {
    let dockerfile = Dockerfile::load();
    let config = dockerfile.config();
    assert_eq!(dockerfile.exposed_ports(), ports(&config), "EXPOSE");

    let compose = compose();
    let relay = service(&compose, RELAY);
    let published = published(relay);
    for p in &published {
        assert!(
            ports(&config).contains(&p.container_port),
            "compose publishes {}, which the relay does not listen on",
            p.container_port
        );
        assert_eq!(
            p.host_ip.as_deref(),
            Some("127.0.0.1"),
            "port {} must be published on the host's loopback only",
            p.container_port
        );
    }
    let admin = config.admin.listen.expect("the admin endpoint").port();
    assert!(
        published.iter().any(|p| p.container_port == admin),
        "the admin port is published (on the host's loopback)"
    );
    for port in strings(&relay["expose"]) {
        assert!(
            ports(&config).contains(&port.parse().unwrap()),
            "expose {port}"
        );
    }
}

#[test]
fn volumes_hold_everything_the_relay_writes() {
    let dockerfile = Dockerfile::load();
    let (uid, gid) = dockerfile.user();
    let (_, config_path) = dockerfile.cmd();
    let config = container_config(&config_path);
    let volumes = dockerfile.volumes();

    let under = |path: &Path, what: &str| {
        assert!(
            volumes.iter().any(|v| path.starts_with(v)),
            "{what} {} is in no VOLUME {volumes:?}",
            path.display()
        );
    };
    under(&config.state_dir, "state_dir");
    under(config.tls.cert.parent().unwrap(), "tls.cert");
    under(config.tls.key.parent().unwrap(), "tls.key");
    // Created on the first start: key_file's folder (/run/secrets) is read-only.
    under(
        config.admin.token_file.parent().unwrap(),
        "admin.token_file",
    );
    assert!(
        !config.key_file.starts_with(&config.state_dir),
        "key_file must be outside state_dir"
    );
    assert!(
        !volumes.iter().any(|v| config_path.starts_with(v)),
        "the config is not in a volume (a volume would pin an old copy)"
    );

    // The image creates each volume's folder owned by its user, so that a new named
    // volume starts out writable by the relay.
    let commands = dockerfile.runtime().run_commands();
    for volume in &volumes {
        assert!(
            commands.iter().any(|c| {
                c.starts_with("install -d")
                    && c.contains(&format!("-o {uid} -g {gid}"))
                    && c.ends_with(&format!(" {}", volume.display()))
            }),
            "the image creates {} owned by {uid}:{gid}",
            volume.display()
        );
    }

    // Compose gives each image volume a named volume, and the root file system is
    // read-only: the volumes are all the relay may write.
    let compose = compose();
    let relay = service(&compose, RELAY);
    let named: BTreeSet<PathBuf> = mounts(relay)
        .into_iter()
        .filter(|m| m.is_named())
        .inspect(|m| {
            assert!(
                compose["volumes"][m.source.as_str()].as_hash().is_some(),
                "volume {} is not declared",
                m.source
            );
        })
        .map(|m| m.target)
        .collect();
    assert_eq!(
        named, volumes,
        "compose's named volumes are the image's VOLUMEs"
    );
    assert_eq!(relay["read_only"].as_bool(), Some(true));

    // key_file is the compose secret.
    let secret = config
        .key_file
        .strip_prefix("/run/secrets")
        .expect("key_file is a compose secret in /run/secrets")
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        strings(&relay["secrets"]).contains(&secret),
        "the relay gets the secret {secret}"
    );
    let file = compose["secrets"][secret.as_str()]["file"]
        .as_str()
        .unwrap_or_else(|| panic!("secret {secret} comes from a file"));
    let file = file.trim_start_matches("./");
    assert!(
        docker_ignores(file),
        "{file} must stay out of the build context"
    );
    assert!(
        readme_section("### As a container sidecar (docker compose)").contains(file),
        "the README says how to make {file}"
    );
}

#[test]
fn the_healthcheck_asks_the_admin_endpoint() {
    let dockerfile = Dockerfile::load();
    let config = dockerfile.config();
    let admin = config.admin.listen.expect("the admin endpoint");
    assert!(admin.ip().is_unspecified() || admin.ip().is_loopback());

    let check = dockerfile.healthcheck();
    let url = check
        .iter()
        .find(|a| a.starts_with("http://"))
        .expect("the health check asks a URL");
    let tool = &check[0];
    if tool == "m365-relay" {
        // `m365-relay health --admin URL` asks URL/healthz.
        assert_eq!(check[1], "health");
        assert_eq!(url, &format!("http://127.0.0.1:{}", admin.port()));
    } else {
        assert_eq!(url, &format!("http://127.0.0.1:{}/healthz", admin.port()));
        assert!(
            dockerfile
                .runtime()
                .run_commands()
                .iter()
                .any(|c| c.contains("apt-get install") && c.split_whitespace().any(|w| w == tool)),
            "the runtime installs {tool}, which the health check runs"
        );
    }

    // The string form (a shell command): Docker Compose and podman-compose both take it;
    // podman-compose 1.0 rejects the `["CMD", ...]` list in `run --rm`.
    let compose = compose();
    let relay = service(&compose, RELAY);
    assert_eq!(
        relay["healthcheck"]["test"].as_str(),
        Some(check.join(" ").as_str()),
        "docker-compose.yml's health check is the image's, as one string"
    );
    for (name, app) in compose["services"].as_hash().unwrap() {
        if scalar(name).as_deref() == Some(RELAY) {
            continue;
        }
        assert_eq!(
            app["depends_on"][RELAY]["condition"].as_str(),
            Some("service_healthy"),
            "{name:?} waits for a healthy relay"
        );
    }
}

#[test]
fn stopping_waits_longer_than_the_shutdown_grace() {
    let dockerfile = Dockerfile::load();
    let config = dockerfile.config();
    if let Some(signal) = dockerfile.runtime().all("STOPSIGNAL").last() {
        assert_eq!(*signal, "SIGTERM");
    }
    let compose = compose();
    let grace = compose["services"][RELAY]["stop_grace_period"]
        .as_str()
        .expect("compose sets stop_grace_period (docker's default is 10 s)");
    assert!(
        seconds(grace) > config.limits.shutdown_grace_secs,
        "stop_grace_period {grace} <= shutdown_grace_secs {}",
        config.limits.shutdown_grace_secs
    );

    let unit = unit();
    let timeout = seconds(service_value(&unit, "TimeoutStopSec"));
    let grace = Limits::default()
        .shutdown_grace_secs
        .max(systemd_config(&unit).limits.shutdown_grace_secs);
    assert!(
        timeout > grace,
        "TimeoutStopSec {timeout} <= shutdown grace {grace}"
    );
    assert_eq!(service_value(&unit, "KillSignal"), "SIGTERM");
}

#[test]
fn descriptor_limits_cover_max_connections() {
    let config = Dockerfile::load().config();
    let needed = 2 * config.limits.max_connections as u64 + FD_MARGIN;
    let compose = compose();
    let nofile = &compose["services"][RELAY]["ulimits"]["nofile"];
    let soft = nofile["soft"]
        .as_i64()
        .or(nofile.as_i64())
        .expect("compose sets ulimits.nofile");
    assert!(soft as u64 >= needed, "nofile {soft} < {needed}");

    let unit = unit();
    let config = systemd_config(&unit);
    let needed = 2 * config.limits.max_connections as u64 + FD_MARGIN;
    let limit: u64 = service_value(&unit, "LimitNOFILE")
        .split(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(limit >= needed, "LimitNOFILE {limit} < {needed}");
}

#[test]
fn the_sidecar_application_uses_tls_to_the_relay() {
    let config = Dockerfile::load().config();
    let compose = compose();
    let relay = service(&compose, RELAY);
    // The self-signed certificate names the container's host name.
    let hostname = relay["hostname"]
        .as_str()
        .expect("the relay has a host name, for its certificate");
    assert_eq!(
        hostname, RELAY,
        "the host name is the name the network resolves"
    );

    let mut apps = 0;
    for (name, app) in compose["services"].as_hash().unwrap() {
        if scalar(name).as_deref() == Some(RELAY) {
            continue;
        }
        apps += 1;
        assert!(
            !networks(app).is_disjoint(&networks(relay)),
            "{name:?} shares a network with the relay"
        );
        let mut text = strings(&app["command"]).join("\n");
        for value in environment(app).values() {
            text.push('\n');
            text.push_str(value);
        }
        let url = text
            .split_whitespace()
            .find(|w| w.starts_with("smtp://") || w.starts_with("smtps://"))
            .expect("the application sends to an smtp:// or smtps:// URL");
        let (scheme, rest) = url.split_once("://").unwrap();
        let (host, port) = rest.trim_end_matches('/').rsplit_once(':').unwrap();
        assert_eq!(
            host, hostname,
            "{url}: the relay's certificate names {hostname}"
        );
        let port: u16 = port.parse().unwrap();
        match scheme {
            "smtp" => {
                assert_eq!(Some(port), config.smtp.listen_starttls.map(|a| a.port()));
                assert!(
                    text.contains("--ssl-reqd"),
                    "{url}: STARTTLS must be required (the relay refuses plaintext AUTH)"
                );
            }
            _ => assert_eq!(Some(port), config.smtp.listen_tls.map(|a| a.port())),
        }
        assert!(
            !text.contains("--insecure") && !text.split_whitespace().any(|w| w == "-k"),
            "{name:?} must verify the relay's certificate"
        );
        let ca = text
            .split_whitespace()
            .skip_while(|w| *w != "--cacert")
            .nth(1)
            .expect("the application trusts the relay's certificate with --cacert");
        assert!(
            mounts(app)
                .iter()
                .any(|m| Path::new(ca).starts_with(&m.target)),
            "{ca} is mounted into {name:?}"
        );
    }
    assert!(apps > 0, "compose has an application beside the relay");

    // The README's export of the certificate names the config's tls.cert.
    assert!(
        readme_section("### As a container sidecar (docker compose)").contains(&format!(
            "docker compose cp {RELAY}:{} ",
            config.tls.cert.display()
        ))
    );
}

#[test]
fn the_unit_runs_the_relay_hardened() {
    let unit = unit();
    let value = |key: &str| service_value(&unit, key);
    assert!(matches!(value("Type"), "simple" | "exec"));

    let exec: Vec<&str> = value("ExecStart").split_whitespace().collect();
    assert_eq!(exec[0], "/usr/local/bin/m365-relay");
    assert_eq!(exec.last(), Some(&"serve"));
    let config_path = unit_config_path(&unit);
    assert_eq!(
        config_path.parent().unwrap(),
        Path::new("/etc").join(value("ConfigurationDirectory")),
        "ExecStart's config is in the ConfigurationDirectory"
    );
    let reload = value("ExecReload");
    assert!(
        reload.contains("-HUP") && reload.contains("$MAINPID"),
        "{reload}"
    );
    assert_eq!(value("Restart"), "on-failure");
    assert_eq!(value("UMask"), "0077");
    let user = value("User");
    assert!(!user.is_empty() && user != "root" && user != "0");

    for key in [
        "NoNewPrivileges",
        "ProtectHome",
        "PrivateTmp",
        "PrivateDevices",
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "ProtectKernelLogs",
        "ProtectControlGroups",
        "RestrictNamespaces",
        "LockPersonality",
        "MemoryDenyWriteExecute",
    ] {
        assert_eq!(value(key), "yes", "{key}");
    }
    assert_eq!(value("ProtectSystem"), "strict");
    assert_eq!(value("SystemCallArchitectures"), "native");
    assert!(
        unit[&("Service".to_owned(), "SystemCallFilter".to_owned())]
            .iter()
            .any(|v| v == "@system-service")
    );
    let families: BTreeSet<&str> = value("RestrictAddressFamilies")
        .split_whitespace()
        .collect();
    assert_eq!(families, BTreeSet::from(["AF_INET", "AF_INET6", "AF_UNIX"]));
    // The relay reads /proc/sys/kernel/hostname (greeting, self-signed certificate).
    assert!(!unit.contains_key(&("Service".to_owned(), "ProcSubset".to_owned())));

    // No capability, unless the configured listeners need one.
    let config = systemd_config(&unit);
    let low = listeners(&config).iter().any(|(_, a)| a.port() < 1024);
    let caps = value("CapabilityBoundingSet");
    if low {
        assert!(caps.contains("CAP_NET_BIND_SERVICE"));
    } else {
        assert_eq!(caps, "", "CapabilityBoundingSet= stays empty");
    }

    // The README installs the unit and the config where the unit looks.
    let readme = readme_section("### As a systemd service");
    assert!(readme.contains(&format!(" {UNIT} /etc/systemd/system/m365-relay.service")));
    assert!(readme.contains(&format!(" {}\n", config_path.display())));
    assert!(readme.contains("systemctl enable --now m365-relay"));
    assert!(readme.contains("systemctl reload m365-relay"));
    assert!(readme.contains(&format!(
        "sudo -u {user} m365-relay --config {}",
        config_path.display()
    )));
}

#[test]
fn the_readme_systemd_config_writes_only_the_state_directory() {
    let unit = unit();
    let config = systemd_config(&unit);
    let state = Path::new("/var/lib").join(service_value(&unit, "StateDirectory"));
    for (what, path) in [
        ("state_dir", &config.state_dir),
        ("key_file", &config.key_file),
        ("tls.cert", &config.tls.cert),
        ("tls.key", &config.tls.key),
        ("admin.token_file", &config.admin.token_file),
    ] {
        assert!(
            path.starts_with(&state),
            "{what} {} is outside the StateDirectory {} (ProtectSystem=strict)",
            path.display(),
            state.display()
        );
    }
    assert!(!config.key_file.starts_with(&config.state_dir));
    // The README says where the key lives.
    assert!(
        readme_section("### As a systemd service")
            .contains(&format!("**The key** is `{}`", config.key_file.display()))
    );
}

#[test]
fn the_build_context_holds_what_the_build_copies_and_no_secrets() {
    let dockerfile = Dockerfile::load();
    for stage in &dockerfile.stages {
        for (flags, sources, _) in stage.copies() {
            if flags.iter().any(|f| f.starts_with("--from")) {
                continue;
            }
            for source in sources {
                let source = source.trim_start_matches("./").trim_end_matches('/');
                assert!(
                    !docker_ignores(source),
                    "COPY {source}, but .dockerignore leaves it out"
                );
            }
        }
    }
    // What include_str! pulls into the binary.
    assert!(!docker_ignores("config/m365-relay.toml"));
    for kept_out in [
        "target",
        ".git",
        "state",
        "certs/relay.key",
        "certs/state.key",
        "secrets/m365-relay.key",
        "relay-ca/relay.crt",
    ] {
        assert!(
            docker_ignores(kept_out),
            "{kept_out} must stay out of the build context"
        );
    }
}

#[test]
fn the_readme_explains_the_three_deployments() {
    let deployment = readme_section("## Deployment");
    let sidecar = deployment
        .find("### As a container sidecar (docker compose)")
        .expect("the sidecar subsection");
    let systemd = deployment
        .find("### As a systemd service")
        .expect("the systemd subsection");
    let plain = deployment
        .find("### As a plain binary")
        .expect("the plain-binary subsection");
    assert!(sidecar < systemd && systemd < plain);

    let sidecar = readme_section("### As a container sidecar (docker compose)");
    for line in [
        "docker compose run --rm relay mailbox add ",
        "docker compose exec relay m365-relay mailbox authorize ",
        "allow_plaintext_on_loopback = false",
    ] {
        assert!(sidecar.contains(line), "the sidecar section shows `{line}`");
    }
    let (_, config_path) = Dockerfile::load().cmd();
    let config = container_config(&config_path);
    assert!(sidecar.contains(&format!("`{}`", config.key_file.display())));
    assert!(readme_section("### As a plain binary").contains(&format!(
        "m365-relay --config {} serve",
        config_path.display()
    )));
}
