//! `m365-relay mailbox ...`: the administrator's commands to register mailboxes, set their
//! local passwords, import refresh tokens, list and remove them. They edit the files in
//! `state_dir`; a running relay notices registry changes at the next login.

use std::ffi::OsString;
use std::io::{self, BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use serde::Serialize;
use zeroize::Zeroizing;

use crate::auth::{generate_password, hash_chosen};
use crate::config::Config;
use crate::mailbox::{Mailbox, Registry, is_host_name, normalize_address};
use crate::oauth::store::TokenStore;
use crate::secret::{ClientSecret, Password, RefreshToken};

/// Environment variable that may hold the client secret for `mailbox add`.
pub const CLIENT_SECRET_ENV: &str = "M365_RELAY_CLIENT_SECRET";

/// Longest local password read from standard input.
const MAX_PASSWORD_LEN: usize = 1024;

/// Longest refresh token read from standard input (Entra's are about 1-2 KB).
const MAX_TOKEN_LEN: usize = 16 * 1024;

/// Mailbox administration.
#[derive(clap::Subcommand, Debug)]
pub enum MailboxCommand {
    /// Register a mailbox and the Entra app registration used to get its tokens.
    ///
    /// For a confidential app, give the client secret in a file (--client-secret-file) or
    /// in the environment variable M365_RELAY_CLIENT_SECRET, never on the command line.
    Add {
        /// The mailbox address, e.g. alice@contoso.com.
        address: String,
        /// The Entra tenant: its GUID, a verified domain, `organizations` or `common`.
        #[arg(long)]
        tenant: String,
        /// The application (client) id of the app registration (a GUID).
        #[arg(long)]
        client_id: String,
        /// A file holding the client secret of a confidential app (a trailing newline
        /// is ignored).
        #[arg(long, value_name = "FILE")]
        client_secret_file: Option<PathBuf>,
    },
    /// Set the local password that mail clients use for this mailbox.
    Password {
        /// The mailbox address.
        address: String,
        #[command(flatten)]
        source: PasswordSource,
    },
    /// Store a refresh token for the mailbox, read from standard input.
    ImportToken {
        /// The mailbox address.
        address: String,
    },
    /// List the registered mailboxes (never their secrets).
    List {
        /// Print a JSON array instead of one line per mailbox.
        #[arg(long)]
        json: bool,
    },
    /// Remove a mailbox and its stored refresh token.
    Remove {
        /// The mailbox address.
        address: String,
    },
}

/// Where a new local password comes from: exactly one of the two.
#[derive(clap::Args, Debug)]
#[group(required = true, multiple = false)]
pub struct PasswordSource {
    /// Generate a random password and print it once.
    #[arg(long)]
    generate: bool,
    /// Read the password from one line of standard input.
    #[arg(long)]
    stdin: bool,
}

/// Runs a mailbox command against `config.state_dir`.
pub fn run(command: MailboxCommand, config: &Config) -> anyhow::Result<()> {
    let stdin = io::stdin();
    let mut console = Console {
        input: &mut stdin.lock(),
        out: &mut io::stdout().lock(),
        err: &mut io::stderr().lock(),
        env_secret: std::env::var_os(CLIENT_SECRET_ENV),
    };
    execute(command, &config.state_dir, &mut console)
}

/// The process's standard streams and environment, replaceable in tests.
struct Console<'a> {
    input: &'a mut dyn BufRead,
    out: &'a mut dyn Write,
    err: &'a mut dyn Write,
    env_secret: Option<OsString>,
}

fn execute(command: MailboxCommand, state_dir: &Path, io: &mut Console<'_>) -> anyhow::Result<()> {
    match command {
        MailboxCommand::Add {
            address,
            tenant,
            client_id,
            client_secret_file,
        } => {
            let address = normalize_address(&address)?;
            let tenant = validate_tenant(&tenant).context("--tenant")?;
            let client_id = validate_guid(&client_id).context("--client-id")?;
            let client_secret = client_secret(client_secret_file.as_deref(), io.env_secret.take())?;
            let kind = if client_secret.is_some() {
                "confidential"
            } else {
                "public"
            };
            let mut registry = Registry::load(state_dir)?;
            registry.insert(Mailbox {
                address: address.clone(),
                tenant,
                client_id,
                client_secret,
                password: None,
                created: unix_now(),
            })?;
            registry.save(state_dir)?;
            writeln!(io.out, "added {address} ({kind} client)")?;
            writeln!(
                io.out,
                "next: `m365-relay mailbox password {address} --generate` and \
                 `m365-relay mailbox import-token {address}`"
            )?;
        }
        MailboxCommand::Password { address, source } => {
            let address = normalize_address(&address)?;
            let mut registry = Registry::load(state_dir)?;
            if registry.get(&address).is_none() {
                bail!("mailbox {address} is not registered");
            }
            if source.generate {
                let (password, verifier) = generate_password()?;
                registry.set_password(&address, Some(verifier))?;
                registry.save(state_dir)?;
                writeln!(io.out, "{}", password.expose())?;
                writeln!(
                    io.err,
                    "This is the new password of {address}. It will not be shown again."
                )?;
            } else {
                let password = read_password(io.input)?;
                registry.set_password(&address, Some(hash_chosen(&password)?))?;
                registry.save(state_dir)?;
                writeln!(io.out, "password of {address} set")?;
            }
        }
        MailboxCommand::ImportToken { address } => {
            let address = normalize_address(&address)?;
            if Registry::load(state_dir)?.get(&address).is_none() {
                bail!("mailbox {address} is not registered; add it first");
            }
            let token = read_token(io.input)?;
            TokenStore::new(state_dir).save(&address, &token)?;
            writeln!(io.out, "refresh token of {address} stored")?;
        }
        MailboxCommand::List { json } => list(state_dir, json, io)?,
        MailboxCommand::Remove { address } => {
            let address = normalize_address(&address)?;
            let mut registry = Registry::load(state_dir)?;
            if registry.remove(&address).is_none() {
                bail!("mailbox {address} is not registered");
            }
            registry.save(state_dir)?;
            TokenStore::new(state_dir).remove(&address)?;
            writeln!(io.out, "removed {address} and its refresh token")?;
        }
    }
    Ok(())
}

/// What `list` shows of a mailbox: never a secret.
#[derive(Serialize)]
struct Listed<'a> {
    address: &'a str,
    tenant: &'a str,
    client_id: &'a str,
    /// `public` or `confidential`.
    client_type: &'static str,
    password_set: bool,
    token_stored: bool,
    created: u64,
}

fn list(state_dir: &Path, json: bool, io: &mut Console<'_>) -> anyhow::Result<()> {
    let registry = Registry::load(state_dir)?;
    let store = TokenStore::new(state_dir);
    let mut rows = Vec::with_capacity(registry.len());
    for m in registry.iter() {
        let token_stored = match store.load(&m.address) {
            Ok(token) => token.is_some(),
            Err(e) => {
                writeln!(io.err, "warning: {e}")?;
                false
            }
        };
        rows.push(Listed {
            address: &m.address,
            tenant: &m.tenant,
            client_id: &m.client_id,
            client_type: if m.client_secret.is_some() {
                "confidential"
            } else {
                "public"
            },
            password_set: m.password.is_some(),
            token_stored,
            created: m.created,
        });
    }
    if json {
        writeln!(io.out, "{}", serde_json::to_string_pretty(&rows)?)?;
        return Ok(());
    }
    if rows.is_empty() {
        writeln!(io.err, "no mailboxes registered")?;
    }
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    for r in rows {
        writeln!(
            io.out,
            "{}  tenant={}  client_id={}  {}  password={}  token={}",
            r.address,
            r.tenant,
            r.client_id,
            r.client_type,
            yes_no(r.password_set),
            yes_no(r.token_stored)
        )?;
    }
    Ok(())
}

/// The client secret from `file` if given, else from the environment, else none.
fn client_secret(
    file: Option<&Path>,
    env: Option<OsString>,
) -> anyhow::Result<Option<ClientSecret>> {
    let (raw, from) = match (file, env) {
        (Some(path), _) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading client secret file {}", path.display()))?;
            (Zeroizing::new(text), path.display().to_string())
        }
        (None, Some(value)) if !value.is_empty() => {
            let text = value
                .into_string()
                .map_err(|_| anyhow::anyhow!("{CLIENT_SECRET_ENV} is not valid UTF-8"))?;
            (Zeroizing::new(text), CLIENT_SECRET_ENV.to_owned())
        }
        (None, _) => return Ok(None),
    };
    let secret = raw.trim_end_matches(['\n', '\r']);
    if secret.is_empty() {
        bail!("the client secret in {from} is empty");
    }
    if secret.chars().any(|c| c.is_whitespace() || c.is_control()) {
        bail!("the client secret in {from} contains white space or control characters");
    }
    Ok(Some(ClientSecret::new(secret)))
}

/// One line of input as a password, without its line ending.
fn read_password(input: &mut dyn BufRead) -> anyhow::Result<Password> {
    let mut line = Zeroizing::new(String::with_capacity(MAX_PASSWORD_LEN + 2));
    input
        .take(MAX_PASSWORD_LEN as u64 + 2)
        .read_line(&mut line)
        .context("reading the password from standard input")?;
    if line.len() > MAX_PASSWORD_LEN + 1 || (line.len() > MAX_PASSWORD_LEN && !line.ends_with('\n'))
    {
        bail!("the password is longer than {MAX_PASSWORD_LEN} bytes");
    }
    let password = line.trim_end_matches('\n').trim_end_matches('\r');
    if password.is_empty() {
        bail!("the password read from standard input is empty");
    }
    Ok(Password::new(password))
}

/// All of the input as a refresh token, trimmed.
fn read_token(input: &mut dyn BufRead) -> anyhow::Result<RefreshToken> {
    let mut text = Zeroizing::new(String::new());
    input
        .take(MAX_TOKEN_LEN as u64 + 1)
        .read_to_string(&mut text)
        .context("reading the refresh token from standard input")?;
    let token = text.trim();
    if text.len() > MAX_TOKEN_LEN {
        bail!("the refresh token is longer than {MAX_TOKEN_LEN} bytes");
    }
    if token.is_empty() {
        bail!("no refresh token on standard input");
    }
    if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        bail!("the refresh token contains white space; paste exactly one token");
    }
    Ok(RefreshToken::new(token))
}

/// A tenant: a GUID, `organizations`, `common`, or a domain name; lower-cased.
fn validate_tenant(tenant: &str) -> anyhow::Result<String> {
    let t = tenant.to_ascii_lowercase();
    if t == "organizations" || t == "common" || validate_guid(&t).is_ok() {
        return Ok(t);
    }
    if !is_host_name(&t) {
        bail!("`{tenant}` is not a tenant GUID, a domain name, `organizations` or `common`");
    }
    Ok(t)
}

/// A GUID in its 8-4-4-4-12 hex form; lower-cased.
fn validate_guid(s: &str) -> anyhow::Result<String> {
    let ok = s.len() == 36
        && s.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        });
    if !ok {
        bail!("`{s}` is not a GUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)");
    }
    Ok(s.to_ascii_lowercase())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    const GUID: &str = "11111111-2222-3333-4444-555555555555";

    #[derive(Parser)]
    struct TestCli {
        #[command(subcommand)]
        command: MailboxCommand,
    }

    /// Runs `mailbox {args}` (split at spaces; `GUID` stands for [`GUID`]); returns
    /// (stdout, stderr).
    fn exec_env(
        dir: &Path,
        args: &str,
        stdin: &str,
        env: Option<&str>,
    ) -> anyhow::Result<(String, String)> {
        let args = args.replace("GUID", GUID);
        let cli = TestCli::try_parse_from(std::iter::once("mailbox").chain(args.split(' ')))?;
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let mut console = Console {
            input: &mut stdin.as_bytes(),
            out: &mut out,
            err: &mut err,
            env_secret: env.map(OsString::from),
        };
        execute(cli.command, dir, &mut console)?;
        Ok((String::from_utf8(out)?, String::from_utf8(err)?))
    }

    fn exec(dir: &Path, args: &str, stdin: &str) -> anyhow::Result<String> {
        exec_env(dir, args, stdin, None).map(|(out, _)| out)
    }

    fn fails(dir: &Path, args: &str, stdin: &str) -> String {
        format!("{:#}", exec(dir, args, stdin).err().unwrap())
    }

    #[test]
    fn the_command_definition_is_consistent() {
        TestCli::command().debug_assert();
    }

    #[test]
    fn add_and_list_never_show_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let file = d.join("secret");
        std::fs::write(&file, "Abc~secret.value\n").unwrap();
        let args = format!(
            "add Alice@Contoso.com --tenant GUID --client-id GUID --client-secret-file {}",
            file.display()
        );
        let out = exec(d, &args, "").unwrap();
        assert!(
            out.starts_with("added alice@contoso.com (confidential client)"),
            "{out}"
        );
        let args = "add bob@contoso.com --tenant common --client-id GUID";
        exec_env(d, args, "", Some("env~secret")).unwrap();
        exec(
            d,
            "add carol@contoso.com --tenant contoso.com --client-id GUID",
            "",
        )
        .unwrap();

        let registry = Registry::load(d).unwrap();
        let secret = |a: &str| {
            registry
                .get(a)
                .unwrap()
                .client_secret
                .as_ref()
                .map(|s| s.expose().to_owned())
        };
        assert_eq!(
            secret("alice@contoso.com").as_deref(),
            Some("Abc~secret.value")
        );
        assert_eq!(secret("bob@contoso.com").as_deref(), Some("env~secret"));
        assert_eq!(secret("carol@contoso.com"), None);

        let text = exec(d, "list", "").unwrap();
        assert_eq!(text.lines().count(), 3, "{text}");
        let alice = format!(
            "alice@contoso.com  tenant={GUID}  client_id={GUID}  confidential  password=no  token=no\n"
        );
        assert!(text.starts_with(&alice), "{text}");
        let json = exec(d, "list --json", "").unwrap();
        let rows: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(
            (&rows[2]["address"], &rows[2]["client_type"]),
            (&"carol@contoso.com".into(), &"public".into())
        );
        assert_eq!(rows[0]["password_set"], false);
        assert!(
            !text.contains("secret") && !json.contains("secret"),
            "{text}{json}"
        );
    }

    #[test]
    fn add_refuses_bad_input() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        exec(
            d,
            "add alice@contoso.com --tenant common --client-id GUID",
            "",
        )
        .unwrap();
        for (args, expected) in [
            (
                "add ALICE@contoso.com --tenant common --client-id GUID",
                "already registered",
            ),
            (
                "add x@contoso.com --tenant contoso --client-id GUID",
                "--tenant",
            ),
            (
                "add x@contoso.com --tenant common --client-id app",
                "--client-id",
            ),
            (
                "add x@ --tenant common --client-id GUID",
                "not a valid mailbox",
            ),
            (
                "add x@contoso.com --tenant common --client-id GUID --client-secret-file /no/file",
                "/no/file",
            ),
            (
                "add x@contoso.com --tenant common --client-id GUID --client-secret oops",
                "--client-secret",
            ),
        ] {
            let e = fails(d, args, "");
            assert!(e.contains(expected), "{args}: {e}");
        }
        let e = exec_env(
            d,
            "add x@contoso.com --tenant common --client-id GUID",
            "",
            Some("a b"),
        );
        assert!(e.err().unwrap().to_string().contains("white space"));
        assert_eq!(Registry::load(d).unwrap().len(), 1);
    }

    #[tokio::test]
    async fn generated_and_chosen_passwords() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        exec(
            d,
            "add alice@contoso.com --tenant common --client-id GUID",
            "",
        )
        .unwrap();
        let (out, err) = exec_env(d, "password alice@contoso.com --generate", "", None).unwrap();
        assert_eq!(out.lines().count(), 1);
        assert!(err.contains("will not be shown again"), "{err}");
        let generated = Password::new(out.trim_end());
        let auth = crate::auth::LocalAuth::new(d.to_path_buf()).unwrap();
        assert!(auth.check("alice@contoso.com", &generated).await.is_some());

        assert!(fails(d, "password alice@contoso.com --stdin", "\n").contains("empty"));
        exec(d, "password alice@contoso.com --stdin", "correct horse\r\n").unwrap();
        assert!(auth.check("alice@contoso.com", &generated).await.is_none());
        let chosen = Password::new("correct horse");
        assert!(auth.check("ALICE@contoso.com", &chosen).await.is_some());

        for args in [
            "password alice@contoso.com",
            "password alice@contoso.com --stdin --generate",
        ] {
            assert!(exec(d, args, "x\n").is_err(), "{args}");
        }
        assert!(fails(d, "password nobody@contoso.com --generate", "").contains("not registered"));
    }

    #[test]
    fn import_token_then_remove() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        assert!(fails(d, "import-token alice@contoso.com", "rt").contains("not registered"));
        exec(
            d,
            "add alice@contoso.com --tenant common --client-id GUID",
            "",
        )
        .unwrap();
        for bad in ["", " \n", "two tokens\n"] {
            assert!(
                exec(d, "import-token alice@contoso.com", bad).is_err(),
                "{bad:?}"
            );
        }
        exec(d, "import-token Alice@contoso.com", "  0.AAAA-rt\n").unwrap();
        let store = TokenStore::new(d);
        assert_eq!(
            store.load("alice@contoso.com").unwrap().unwrap().expose(),
            "0.AAAA-rt"
        );
        assert!(exec(d, "list", "").unwrap().contains("token=yes"));

        let out = exec(d, "remove alice@contoso.com", "").unwrap();
        assert!(out.contains("removed alice@contoso.com"), "{out}");
        assert!(store.load("alice@contoso.com").unwrap().is_none());
        assert!(Registry::load(d).unwrap().is_empty());
        assert!(fails(d, "remove alice@contoso.com", "").contains("not registered"));
        let listed = exec_env(d, "list", "", None).unwrap();
        assert_eq!(
            listed,
            (String::new(), "no mailboxes registered\n".to_owned())
        );
    }

    #[test]
    fn tenants_and_guids() {
        for ok in ["common", "Organizations", "contoso.onmicrosoft.com", GUID] {
            assert!(validate_tenant(ok).is_ok(), "{ok}");
        }
        for bad in ["", "contoso", "consumers", "a_b.com", "x/y.com", "-a.com"] {
            assert!(validate_tenant(bad).is_err(), "{bad}");
        }
        assert_eq!(validate_guid(&GUID.to_uppercase()).unwrap(), GUID);
        assert!(validate_guid("11111111222233334444555555555555").is_err());
    }
}
