//! Kubernetes drift: the manifests of `deploy/kubernetes/` are valid against Kubernetes'
//! own schemas (PyPI's `kubernetes-validate`, offline, strict) and agree with the relay:
//! the ConfigMap's config parses as the relay parses it; container and Service ports are its
//! listeners; the probes ask its admin endpoint; the Secret holds exactly what it reads; the
//! migration Job runs a real subcommand; the pods run as the image's user, hardened, writing
//! only emptyDirs; the stop grace covers the relay's drain.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Parser as _;
use m365_relay::admin::gate::OPEN_PATHS;
use m365_relay::admin::token::{AdminToken, TOKEN_ENV};
use m365_relay::cli::Cli;
use m365_relay::config::{Config, DATABASE_URL_ENV, DatabaseTls, StateBackend};
use m365_relay::state::StateKey;
use m365_relay::state::seal::KEY_ENV;
use yaml_rust2::{Yaml, YamlLoader};

use crate::deploy::{Dockerfile, listeners, ports, read, readme_section, scalar};

/// The manifests, in the checkout.
const DIR: &str = "deploy/kubernetes";
/// The Kubernetes version the manifests are validated against: the oldest the README
/// promises. `kubernetes-validate` 1.37.0 bundles the schemas of 1.25 to 1.37.
pub(crate) const KUBERNETES_VERSION: &str = "1.32.0";
/// A database URL as the Secret gives it (README's example).
const EXAMPLE_URL: &str = "postgres://m365_relay:PASSWORD@db.example.com:5432/m365_relay";
/// The README's section for several relays.
pub(crate) const README_SECTION: &str = "## Running several relays";

// === parts of the relay still being built on other branches ===

/// A part of issue 15 that the manifests already use and that another branch builds.
/// While a part is listed in [`PENDING`], the tests check the manifests' side of it as
/// text; [`pending_parts_are_still_missing`] fails as soon as the relay has it, so that it
/// is taken off the list and checked against the relay itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Part {
    /// The config's top-level `proxy_protocol_from = [CIDR...]`.
    ProxyProtocolFrom,
    /// `m365-relay state migrate`.
    StateMigrate,
}

// <!-- H2: confirm --> at merge, once the other branches are in: this list becomes empty.
pub(crate) const PENDING: &[Part] = &[];

pub(crate) fn pending(part: Part) -> bool {
    PENDING.contains(&part)
}

/// Whether the relay has `part` now.
fn relay_has(part: Part) -> bool {
    let parses = |extra: &str| {
        let text = format!("{extra}\n[tls]\ncert = \"/c.crt\"\nkey = \"/c.key\"\n");
        Config::parse(&text, "probe", Path::new("/"), None).is_ok()
    };
    match part {
        Part::ProxyProtocolFrom => parses("proxy_protocol_from = []"),
        Part::StateMigrate => Cli::try_parse_from(["m365-relay", "state", "migrate", "--help"])
            .is_err_and(|e| e.kind() == clap::error::ErrorKind::DisplayHelp),
    }
}

fn read_path(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A relay config as the relay reads it from `path`, given what the pod or container gets
/// from elsewhere: the database URL (the Secret's or compose's `M365_RELAY_DATABASE_URL`,
/// put in `[state] url` here, since the tests do not change the environment) and the
/// database's authority (`ca_file`, a file that must exist: a stand-in with `ca_pem`). The
/// keys of pending parts are left out (the callers check them as text).
pub(crate) fn relay_config(
    text: &str,
    file: &str,
    path: &Path,
    database_url: &str,
    ca_pem: &str,
) -> Config {
    try_relay_config(text, file, path, database_url, ca_pem).unwrap_or_else(|e| panic!("{e}"))
}

fn try_relay_config(
    text: &str,
    file: &str,
    path: &Path,
    database_url: &str,
    ca_pem: &str,
) -> Result<Config, m365_relay::config::ConfigError> {
    let mut table: toml::Table =
        toml::from_str(text).unwrap_or_else(|e| panic!("{file}: not TOML: {e}"));
    let dir = tempfile::tempdir().unwrap();
    if let Some(toml::Value::Table(state)) = table.get_mut("state") {
        assert!(!state.contains_key("url"), "{file}: no URL in the config");
        state.insert("url".into(), database_url.into());
        if state.contains_key("ca_file") {
            let ca = dir.path().join("ca.crt");
            std::fs::write(&ca, ca_pem).unwrap();
            state.insert("ca_file".into(), ca.to_str().unwrap().into());
        }
    }
    if pending(Part::ProxyProtocolFrom) {
        table.remove("proxy_protocol_from");
    }
    let text = toml::to_string(&table).unwrap();
    Config::parse(&text, file, path.parent().unwrap(), Some(path.to_owned()))
}

/// The checks of a fleet relay's config (`config`, parsed from `text`): the listeners of
/// `config/docker.toml`, TLS only; PostgreSQL with no URL in the file (it holds a
/// password); PROXY only from the given networks. Returns `[state]` and those networks.
pub(crate) fn check_fleet_config(
    config: &Config,
    text: &str,
    file: &str,
) -> (toml::Table, Vec<ipnet::IpNet>) {
    let container = Dockerfile::load().config();
    assert_eq!(
        listeners(config),
        listeners(&container),
        "{file}: the listeners of config/docker.toml"
    );
    assert!(!config.allow_plaintext_on_loopback, "{file}");
    assert!(!config.key_file.starts_with(&config.state_dir), "{file}");
    let table: toml::Table = toml::from_str(text).unwrap();
    let state = table["state"]
        .as_table()
        .unwrap_or_else(|| panic!("{file}: a [state] table"))
        .clone();
    assert_eq!(state["backend"].as_str(), Some("postgres"), "{file}");
    assert!(
        !state.contains_key("url"),
        "{file}: the database URL holds a password: {DATABASE_URL_ENV}, not the config"
    );
    let networks: Vec<ipnet::IpNet> = table["proxy_protocol_from"]
        .as_array()
        .unwrap_or_else(|| panic!("{file}: proxy_protocol_from = [CIDR...]"))
        .iter()
        .map(|n| n.as_str().unwrap().parse().unwrap())
        .collect();
    assert!(!networks.is_empty(), "{file}: proxy_protocol_from is empty");
    for net in &networks {
        assert!(
            !net.addr().is_loopback() && !net.addr().is_unspecified() && net.prefix_len() >= 8,
            "{file}: proxy_protocol_from {net} must be the balancer's network, tight"
        );
    }
    (state, networks)
}

// === the manifests ===

fn manifest_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(DIR);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 6, "{DIR}: {files:?}");
    files
}

/// Every resource in `deploy/kubernetes/`, by `Kind/name`.
fn resources() -> BTreeMap<String, Yaml> {
    let mut all = BTreeMap::new();
    for file in manifest_files() {
        for doc in YamlLoader::load_from_str(&read_path(&file)).unwrap() {
            let id = format!(
                "{}/{}",
                doc["kind"].as_str().unwrap(),
                doc["metadata"]["name"].as_str().unwrap()
            );
            assert!(all.insert(id.clone(), doc).is_none(), "{id} twice");
        }
    }
    all
}

fn resource(id: &str) -> Yaml {
    resources()
        .remove(id)
        .unwrap_or_else(|| panic!("{DIR} has no {id}"))
}

fn list(value: &Yaml) -> &[Yaml] {
    value.as_vec().map(Vec::as_slice).unwrap_or(&[])
}

fn strs(value: &Yaml) -> Vec<String> {
    list(value).iter().map(|v| scalar(v).unwrap()).collect()
}

/// The one container of a pod template.
fn container(workload: &Yaml) -> &Yaml {
    let containers = list(&workload["spec"]["template"]["spec"]["containers"]);
    assert_eq!(containers.len(), 1, "one container");
    &containers[0]
}

fn pod(workload: &Yaml) -> &Yaml {
    &workload["spec"]["template"]["spec"]
}

fn env(container: &Yaml) -> BTreeMap<String, Yaml> {
    list(&container["env"])
        .iter()
        .map(|e| (e["name"].as_str().unwrap().to_owned(), e.clone()))
        .collect()
}

/// Container ports by name.
fn container_ports(container: &Yaml) -> BTreeMap<String, u16> {
    list(&container["ports"])
        .iter()
        .map(|p| {
            assert_eq!(p["protocol"].as_str(), Some("TCP"));
            let port = p["containerPort"].as_i64().unwrap();
            (p["name"].as_str().unwrap().to_owned(), port as u16)
        })
        .collect()
}

/// Volume mounts: mount path → (volume name, read-only).
fn volume_mounts(container: &Yaml) -> BTreeMap<PathBuf, (String, bool)> {
    list(&container["volumeMounts"])
        .iter()
        .map(|m| {
            (
                PathBuf::from(m["mountPath"].as_str().unwrap()),
                (
                    m["name"].as_str().unwrap().to_owned(),
                    m["readOnly"].as_bool() == Some(true),
                ),
            )
        })
        .collect()
}

fn volume<'a>(workload: &'a Yaml, name: &str) -> &'a Yaml {
    list(&pod(workload)["volumes"])
        .iter()
        .find(|v| v["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no volume {name}"))
}

/// Where the pod finds `path`: the mount above it, its volume, and the path inside it.
fn mounted<'a>(workload: &'a Yaml, path: &Path) -> (&'a Yaml, bool, PathBuf) {
    let mounts = volume_mounts(container(workload));
    let (at, (name, read_only)) = mounts
        .iter()
        .filter(|(at, _)| path.starts_with(at))
        .max_by_key(|(at, _)| at.components().count())
        .unwrap_or_else(|| panic!("{} is in no volume", path.display()));
    let inside = path.strip_prefix(at).unwrap().to_owned();
    (volume(workload, name), *read_only, inside)
}

/// The ConfigMap's config, and where the pod reads it (Dockerfile CMD's path).
fn configmap_config() -> (String, PathBuf) {
    let (_, path) = Dockerfile::load().cmd();
    let configmap = resource("ConfigMap/m365-relay");
    let key = path.file_name().unwrap().to_str().unwrap();
    let text = configmap["data"][key]
        .as_str()
        .unwrap_or_else(|| panic!("the ConfigMap holds {key}"))
        .to_owned();
    (text, path)
}

fn config() -> Config {
    let (text, path) = configmap_config();
    relay_config(&text, "ConfigMap m365-relay", &path, EXAMPLE_URL, &ca_pem())
}

/// The ConfigMap's `postgres-ca.crt`.
fn ca_pem() -> String {
    resource("ConfigMap/m365-relay")["data"]["postgres-ca.crt"]
        .as_str()
        .expect("the ConfigMap holds postgres-ca.crt")
        .to_owned()
}

fn secret_keys(secret: &Yaml) -> BTreeSet<String> {
    secret["stringData"]
        .as_hash()
        .unwrap()
        .keys()
        .map(|k| k.as_str().unwrap().to_owned())
        .collect()
}

// === the tests ===

/// Runs `kubernetes-validate --strict` on `files`; its output on failure.
fn validate(files: &[PathBuf]) -> Result<(), String> {
    let run = Command::new("kubernetes-validate")
        .args([
            "--strict",
            "--quiet",
            "--kubernetes-version",
            KUBERNETES_VERSION,
        ])
        .args(files)
        .output();
    let out = match run {
        Ok(out) => out,
        Err(e) => panic!(
            "kubernetes-validate cannot run ({e}): run tests/run.sh, which installs it \
             (pip install kubernetes-validate)"
        ),
    };
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    if out.status.success() && !text.contains("ERROR") {
        Ok(())
    } else {
        Err(text)
    }
}

#[test]
fn manifests_are_valid_against_the_kubernetes_schemas() {
    let files = manifest_files();
    if let Err(output) = validate(&files) {
        panic!(
            "kubernetes-validate --strict (Kubernetes {KUBERNETES_VERSION}) refused {DIR}:\n{output}"
        );
    }
    // The validation has teeth: a misspelt field fails it.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("deployment.yaml");
    let text = read(&format!("{DIR}/deployment.yaml"));
    let misspelt = text.replacen("imagePullPolicy:", "imagePullPolcy:", 1);
    assert_ne!(misspelt, text);
    std::fs::write(&bad, misspelt).unwrap();
    let output = validate(&[bad]).expect_err("a misspelt field must fail --strict");
    assert!(output.contains("imagePullPolcy"), "{output}");
}

#[test]
fn pending_parts_are_still_missing() {
    for part in PENDING {
        assert!(
            !relay_has(*part),
            "the relay has {part:?} now: take it off PENDING in tests/it/kubernetes.rs, so \
             that the manifests are checked against it"
        );
    }
}

#[test]
fn the_configmap_config_is_the_container_config_for_postgres() {
    let (text, path) = configmap_config();
    let config = config();
    let (state, _) = check_fleet_config(&config, &text, "ConfigMap m365-relay");
    // ca_file is a key of the ConfigMap, where the pod mounts it.
    let ca_file = PathBuf::from(state["ca_file"].as_str().expect("[state] ca_file"));
    assert_eq!(
        ca_file.parent(),
        path.parent(),
        "ca_file is in the ConfigMap"
    );
    let key = ca_file.file_name().unwrap().to_str().unwrap();
    assert!(
        resource("ConfigMap/m365-relay")["data"][key]
            .as_str()
            .is_some()
    );
    // The relay reads it as a PostgreSQL backend with verified TLS.
    match &config.state {
        StateBackend::Postgres(db) => {
            assert_eq!(
                db.tls,
                DatabaseTls::Require,
                "verify-full to a remote server"
            );
            assert!(db.ca_file.is_some());
            assert_eq!(db.server, "db.example.com:5432/m365_relay");
        }
        other => panic!("backend {other:?}"),
    }
}

/// The IANA port of each mail listener, which the Service offers.
const STANDARD_PORTS: [(&str, u16); 6] = [
    ("smtp.listen_starttls", 587),
    ("smtp.listen_tls", 465),
    ("imap.listen_starttls", 143),
    ("imap.listen_tls", 993),
    ("pop3.listen_starttls", 110),
    ("pop3.listen_tls", 995),
];

#[test]
fn container_and_service_ports_are_the_listen_ports() {
    let config = config();
    let deployment = resource("Deployment/m365-relay");
    let named = container_ports(container(&deployment));
    let numbers: BTreeSet<u16> = named.values().copied().collect();
    assert_eq!(numbers, ports(&config), "containerPorts are the listeners");
    assert_eq!(numbers.len(), named.len());

    let service = resource("Service/m365-relay");
    let admin = config.admin.listen.unwrap().port();
    let mut offered = BTreeMap::new();
    for p in list(&service["spec"]["ports"]) {
        let target = p["targetPort"].as_str().expect("targetPort by name");
        let port = named[target];
        assert_ne!(port, admin, "the Service must not offer the admin endpoint");
        offered.insert(port, p["port"].as_i64().unwrap() as u16);
    }
    for (key, addr) in listeners(&config) {
        if key == "admin.listen" {
            continue;
        }
        let standard = STANDARD_PORTS.iter().find(|(k, _)| *k == key).unwrap().1;
        assert_eq!(
            offered.get(&addr.port()),
            Some(&standard),
            "the Service offers {key} ({}) on {standard}",
            addr.port()
        );
    }
    assert_eq!(
        service["spec"]["selector"],
        deployment["spec"]["template"]["metadata"]["labels"]
    );
}

#[test]
fn probes_ask_the_admin_endpoint() {
    let config = config();
    let admin = config.admin.listen.expect("the admin endpoint");
    assert!(
        admin.ip().is_unspecified(),
        "the kubelet asks the pod's address"
    );
    let deployment = resource("Deployment/m365-relay");
    let relay = container(&deployment);
    let named = container_ports(relay);
    for (probe, path) in [
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
        ("startupProbe", "/healthz"),
    ] {
        let get = &relay[probe]["httpGet"];
        assert_eq!(get["path"].as_str(), Some(path), "{probe}");
        let port = named[get["port"].as_str().expect("the port by name")];
        assert_eq!(port, admin.port(), "{probe} asks the admin port");
        assert!(
            OPEN_PATHS.contains(&path),
            "{path} answers without the token"
        );
        assert!(
            get["httpHeaders"].is_badvalue(),
            "the Host is the pod's address"
        );
    }
}

#[test]
fn the_pods_run_hardened_as_the_image_user() {
    let (uid, gid) = Dockerfile::load().user();
    for id in ["Deployment/m365-relay", "Job/m365-relay-migrate"] {
        let workload = resource(id);
        let pod = pod(&workload);
        assert_eq!(
            pod["securityContext"]["runAsUser"].as_i64(),
            Some(uid.into()),
            "{id}"
        );
        assert_eq!(
            pod["securityContext"]["runAsGroup"].as_i64(),
            Some(gid.into()),
            "{id}"
        );
        assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"].as_str(),
            Some("RuntimeDefault")
        );
        assert_eq!(pod["automountServiceAccountToken"].as_bool(), Some(false));
        let c = container(&workload);
        let sc = &c["securityContext"];
        assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true), "{id}");
        assert_eq!(
            sc["allowPrivilegeEscalation"].as_bool(),
            Some(false),
            "{id}"
        );
        assert_eq!(sc["privileged"].as_bool(), Some(false), "{id}");
        assert_eq!(strs(&sc["capabilities"]["drop"]), ["ALL"], "{id}");
        assert!(
            sc["capabilities"]["add"].is_badvalue(),
            "{id}: no capability added"
        );
        for kind in ["requests", "limits"] {
            for what in ["cpu", "memory"] {
                assert!(
                    scalar(&c["resources"][kind][what]).is_some(),
                    "{id}: resources.{kind}.{what}"
                );
            }
        }
    }
}

#[test]
fn the_relay_writes_only_emptydirs_and_reads_its_files_from_mounts() {
    let config = config();
    let (_, config_path) = Dockerfile::load().cmd();
    for id in ["Deployment/m365-relay", "Job/m365-relay-migrate"] {
        let workload = resource(id);
        let c = container(&workload);
        // Writable mounts are emptyDirs; the state folder is one.
        for (at, (name, read_only)) in volume_mounts(c) {
            assert!(
                read_only || volume(&workload, &name)["emptyDir"].as_hash().is_some(),
                "{id}: {} is writable but not an emptyDir",
                at.display()
            );
        }
        let (state, read_only, _) = mounted(&workload, &config.state_dir);
        assert!(
            state["emptyDir"].as_hash().is_some() && !read_only,
            "{id}: state_dir"
        );
        // The config is the ConfigMap, where CMD and M365_RELAY_CONFIG look.
        let (volume, read_only, inside) = mounted(&workload, &config_path);
        assert!(read_only);
        assert_eq!(
            volume["configMap"]["name"].as_str(),
            Some("m365-relay"),
            "{id}"
        );
        assert_eq!(inside, Path::new(config_path.file_name().unwrap()));
        let env = env(c);
        assert_eq!(
            env["M365_RELAY_CONFIG"]["value"]
                .as_str()
                .map(PathBuf::from),
            Some(config_path.clone()),
            "{id}"
        );
    }
    // The listeners' certificate and key: the TLS Secret, the same on every replica.
    let deployment = resource("Deployment/m365-relay");
    for (what, path, key) in [
        ("tls.cert", &config.tls.cert, "tls.crt"),
        ("tls.key", &config.tls.key, "tls.key"),
    ] {
        let (volume, read_only, inside) = mounted(&deployment, path);
        assert!(read_only, "{what}");
        let secret = &volume["secret"];
        assert_eq!(
            secret["secretName"].as_str(),
            Some("m365-relay-tls"),
            "{what}"
        );
        assert!(
            list(&secret["items"])
                .iter()
                .any(|i| i["key"].as_str() == Some(key)
                    && Path::new(i["path"].as_str().unwrap()) == inside),
            "{what} {} is the Secret's {key}",
            path.display()
        );
    }
    assert!(secret_keys(&resource("Secret/m365-relay-tls")).contains("tls.key"));
    // The admin token and the state key come from the environment, so their files are
    // never read or created (the root file system is read-only).
    let env = env(container(&deployment));
    assert!(env.contains_key(TOKEN_ENV) && env.contains_key(KEY_ENV));
}

#[test]
fn the_secret_holds_what_the_relay_reads() {
    let secret = resource("Secret/m365-relay");
    let keys = secret_keys(&secret);
    let read: BTreeSet<String> = [KEY_ENV, TOKEN_ENV, DATABASE_URL_ENV]
        .map(str::to_owned)
        .into();
    assert_eq!(
        keys, read,
        "the Secret's keys are the variables the relay reads"
    );
    // Each variable is the Secret's key of the same name; the Job gets what `state
    // migrate` needs.
    for (id, wanted) in [
        (
            "Deployment/m365-relay",
            vec![KEY_ENV, TOKEN_ENV, DATABASE_URL_ENV],
        ),
        ("Job/m365-relay-migrate", vec![KEY_ENV, DATABASE_URL_ENV]),
    ] {
        let env = env(container(&resource(id)));
        for name in wanted {
            let from = &env.get(name).unwrap_or_else(|| panic!("{id} sets {name}"))["valueFrom"]["secretKeyRef"];
            assert_eq!(from["name"].as_str(), Some("m365-relay"), "{id} {name}");
            assert_eq!(from["key"].as_str(), Some(name), "{id} {name}");
        }
    }
    // The placeholders are refused by the relay: an unedited template cannot run.
    let value = |key: &str| secret["stringData"][key].as_str().unwrap().to_owned();
    assert!(StateKey::from_env_value(OsString::from(value(KEY_ENV))).is_err());
    let nowhere = Path::new("/nonexistent/admin.token");
    assert!(AdminToken::load_with(Some(OsString::from(value(TOKEN_ENV))), nowhere).is_err());
    let tls = resource("Secret/m365-relay-tls");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("relay.crt"), dir.path().join("relay.key"));
    std::fs::write(&cert, tls["stringData"]["tls.crt"].as_str().unwrap()).unwrap();
    std::fs::write(&key, tls["stringData"]["tls.key"].as_str().unwrap()).unwrap();
    assert!(m365_relay::tls::server_config(&cert, &key).is_err());
    let (text, path) = configmap_config();
    let placeholder = value(DATABASE_URL_ENV);
    let refused = try_relay_config(&text, "ConfigMap", &path, &placeholder, &ca_pem());
    assert!(refused.is_err(), "{placeholder} must be refused");
    // No secret in the ConfigMap.
    assert!(!text.contains("postgres://") && !text.contains("postgresql://"));
    // `kubectl apply -f deploy/kubernetes/` skips the template (.yaml, .yml, .json only).
    let template = manifest_files()
        .into_iter()
        .find(|f| read_path(f).contains("kind: Secret"))
        .unwrap();
    let name = template.file_name().unwrap().to_str().unwrap();
    assert!(!name.ends_with(".yaml") && !name.ends_with(".yml") && !name.ends_with(".json"));
}

#[test]
fn the_migration_job_runs_state_migrate_with_the_image() {
    let dockerfile = Dockerfile::load();
    let (cmd, _) = dockerfile.cmd();
    let deployment = resource("Deployment/m365-relay");
    let job = resource("Job/m365-relay-migrate");
    let relay = container(&deployment);
    let migrate = container(&job);
    assert_eq!(
        strs(&relay["args"]),
        cmd,
        "the Deployment runs the image's CMD"
    );
    assert!(relay["command"].is_badvalue() && migrate["command"].is_badvalue());
    let mut wanted = cmd[..cmd.len() - 1].to_vec();
    wanted.extend(["state".to_owned(), "migrate".to_owned()]);
    let args = strs(&migrate["args"]);
    assert_eq!(
        args, wanted,
        "the Job runs `state migrate` with the config of CMD"
    );
    if !pending(Part::StateMigrate) {
        let mut argv = vec!["m365-relay".to_owned()];
        argv.extend(args);
        Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("the Job's command: {e}"));
    }
    assert_eq!(pod(&job)["restartPolicy"].as_str(), Some("Never"));
    assert!(job["spec"]["backoffLimit"].as_i64().is_some());
    assert!(job["spec"]["activeDeadlineSeconds"].as_i64().is_some());

    // The image: the Dockerfile's, as compose names it, at the crate's version.
    let manifest: toml::Table = toml::from_str(&read("Cargo.toml")).unwrap();
    let version = manifest["package"]["version"].as_str().unwrap();
    let compose = YamlLoader::load_from_str(&read("docker-compose.yml")).unwrap();
    let compose_image = compose[0]["services"]["relay"]["image"].as_str().unwrap();
    let (name, _) = compose_image.split_once(':').unwrap();
    for c in [relay, migrate] {
        assert_eq!(
            c["image"].as_str(),
            Some(format!("{name}:{version}").as_str())
        );
        assert_eq!(c["imagePullPolicy"].as_str(), Some("IfNotPresent"));
    }
}

#[test]
fn stopping_waits_for_the_relays_drain() {
    let config = config();
    let deployment = resource("Deployment/m365-relay");
    let grace = pod(&deployment)["terminationGracePeriodSeconds"]
        .as_i64()
        .expect("terminationGracePeriodSeconds") as u64;
    let pre_stop = strs(&container(&deployment)["lifecycle"]["preStop"]["exec"]["command"]);
    let pause: u64 = match pre_stop.as_slice() {
        [] => 0,
        [sleep, secs] if sleep == "sleep" => secs.parse().unwrap(),
        other => panic!("preStop {other:?}: `sleep N` expected"),
    };
    assert!(
        grace > pause + config.limits.shutdown_grace_secs,
        "terminationGracePeriodSeconds {grace} <= preStop {pause} + shutdown_grace_secs {}",
        config.limits.shutdown_grace_secs
    );
}

#[test]
fn replicas_spread_over_nodes_and_a_disruption_keeps_one() {
    let deployment = resource("Deployment/m365-relay");
    let replicas = deployment["spec"]["replicas"].as_i64().unwrap();
    assert!(replicas >= 2);
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    assert_eq!(&deployment["spec"]["selector"]["matchLabels"], labels);
    assert_eq!(
        deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"].as_i64(),
        Some(0)
    );
    let spread = list(&pod(&deployment)["topologySpreadConstraints"]);
    assert!(
        spread.iter().any(|s| {
            s["topologyKey"].as_str() == Some("kubernetes.io/hostname")
                && s["whenUnsatisfiable"].as_str() == Some("DoNotSchedule")
                && s["maxSkew"].as_i64() == Some(1)
                && &s["labelSelector"]["matchLabels"] == labels
        }),
        "one replica per node"
    );
    let pdb = resource("PodDisruptionBudget/m365-relay");
    assert_eq!(pdb["spec"]["minAvailable"].as_i64(), Some(1));
    assert!(1 < replicas);
    assert_eq!(&pdb["spec"]["selector"]["matchLabels"], labels);
    // The Job's pods are not the Deployment's (the Service and the budget skip them).
    let job = resource("Job/m365-relay-migrate");
    assert_ne!(&job["spec"]["template"]["metadata"]["labels"], labels);
}

#[test]
fn the_readme_walks_through_the_manifests() {
    let section = readme_section(README_SECTION);
    for file in manifest_files() {
        let name = file.file_name().unwrap().to_str().unwrap();
        assert!(section.contains(name), "the README names {DIR}/{name}");
    }
    for text in [
        "kubectl create secret generic m365-relay",
        "kubectl create secret tls m365-relay-tls",
        "job/m365-relay-migrate",
        "/readyz",
        KEY_ENV,
        TOKEN_ENV,
        DATABASE_URL_ENV,
        "state migrate",
        "state status",
        "state export",
        "state import",
        "ca_file",
        "verify-full",
        KUBERNETES_VERSION,
    ] {
        assert!(
            section.contains(text),
            "the README's {README_SECTION} shows `{text}`"
        );
    }
}
