//! `mailbox credential`, and the credential of a confidential app wherever it is given:
//! a client secret (from a file or the environment) or a certificate and its key.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Context, bail};
use zeroize::Zeroizing;

use super::console::{CLIENT_SECRET_ENV, Console, unix_now};
use crate::mailbox::{Credential, Registration, Registry, normalize_address};
use crate::oauth::assertion::{AssertionAlg, CertificateCredential};
use crate::oauth::flows;
use crate::secret::ClientSecret;
use crate::state::State;

/// `mailbox credential`: the mailbox and its app's new credential.
#[derive(clap::Args, Debug)]
pub struct CredentialCommand {
    /// The mailbox address (one with its own app registration, not --token-from).
    pub(super) address: String,
    #[command(flatten)]
    pub(super) credential: CredentialArgs,
    /// No secret and no certificate: the app is a public client.
    #[arg(long, conflicts_with_all = ["client_secret_file", "secret_expires", "certificate", "private_key", "assertion_alg"])]
    pub(super) public: bool,
}

/// The credential of a confidential app: a client secret, or a certificate and its key.
/// Neither makes a public client.
#[derive(clap::Args, Debug)]
pub struct CredentialArgs {
    /// A file holding the client secret of a confidential app (a trailing newline is
    /// ignored).
    #[arg(long, value_name = "FILE", conflicts_with = "certificate")]
    pub(super) client_secret_file: Option<PathBuf>,
    /// When the client secret expires (the date the Entra admin center shows), so that the
    /// relay can warn in time.
    #[arg(
        long,
        value_name = "YYYY-MM-DD",
        value_parser = super::input::parse_date,
        conflicts_with = "certificate"
    )]
    pub(super) secret_expires: Option<u64>,
    /// A PEM file with the certificate uploaded to the app registration (under
    /// Certificates & secrets): the app signs a client assertion with its key instead of
    /// sending a secret. Its expiry is read from it.
    #[arg(long, value_name = "CERT.pem", requires = "private_key")]
    pub(super) certificate: Option<PathBuf>,
    /// A PEM file with the certificate's RSA private key (PKCS#8 or PKCS#1, unencrypted).
    /// It is stored encrypted in the state folder; the file is not needed afterwards.
    #[arg(long, value_name = "KEY.pem", requires = "certificate")]
    pub(super) private_key: Option<PathBuf>,
    /// How the client assertion is signed: ps256 (RSA-PSS, with the SHA-256 thumbprint
    /// x5t#S256, as Microsoft documents it now) or rs256 (PKCS#1 v1.5, with the SHA-1
    /// thumbprint x5t). Default: ps256.
    #[arg(long, value_enum, value_name = "ALG", requires = "certificate")]
    pub(super) assertion_alg: Option<AssertionAlg>,
}

/// Prints what the app proves itself with, and until when.
pub(super) fn describe_credential(
    credential: &Credential,
    io: &mut Console<'_>,
) -> anyhow::Result<()> {
    let until = |expires: Option<u64>| match expires {
        Some(at) => format!(
            ", expires {}",
            flows::utc(UNIX_EPOCH + Duration::from_secs(at))
        ),
        None => String::new(),
    };
    match credential {
        Credential::None => {}
        Credential::Secret { expires, .. } => {
            writeln!(io.out, "credential: client secret{}", until(*expires))?;
        }
        Credential::Certificate(c) => {
            let thumbprint = match c.alg() {
                AssertionAlg::Ps256 => "x5t#S256",
                AssertionAlg::Rs256 => "x5t",
            };
            writeln!(
                io.out,
                "credential: certificate with thumbprint {} ({}, {thumbprint}){}",
                c.thumbprint_hex(),
                c.alg().jws_name(),
                until(Some(c.not_after()))
            )?;
            writeln!(
                io.out,
                "the app registration must have this certificate (its public part, the \
                 --certificate file) under Certificates & secrets > Certificates"
            )?;
        }
    }
    Ok(())
}

/// `mailbox credential`: the app's new secret or certificate replaces the old one; the
/// refresh token stays.
pub(super) fn replace_credential(
    state: &State,
    command: CredentialCommand,
    io: &mut Console<'_>,
) -> anyhow::Result<()> {
    let address = normalize_address(&command.address)?;
    // Checked before the credential is read, and again under the lock.
    let app_only = app_only_of(&state.registry().load_and_migrate()?, &address)?;
    let new = credential(&command.credential, io)?;
    if !new.is_confidential() && !command.public {
        bail!(
            "give the new credential: --client-secret-file (or {CLIENT_SECRET_ENV}), or \
             --certificate and --private-key; or --public for none"
        );
    }
    let mut registry = state.registry().locked()?;
    if (app_only || app_only_of(&registry, &address)?) && !new.is_confidential() {
        bail!("{address} is app-only: its app needs a client secret or a certificate");
    }
    registry.set_credential(&address, new)?;
    registry.save()?;
    writeln!(
        io.out,
        "credential of {address} replaced; its refresh token is kept"
    )?;
    if let Some(Registration::App { credential, .. }) =
        registry.get(&address).map(|m| &m.registration)
    {
        describe_credential(credential, io)?;
    }
    Ok(())
}

/// Whether `address` is app-only; an error if it is not registered or has no app of its own.
fn app_only_of(registry: &Registry, address: &str) -> anyhow::Result<bool> {
    let Some(mailbox) = registry.get(address) else {
        bail!("mailbox {address} is not registered");
    };
    match &mailbox.registration {
        Registration::App { app_only, .. } => Ok(*app_only),
        Registration::TokenFrom { delegate } => {
            bail!("{address} takes its token from {delegate}: replace the credential of {delegate}")
        }
    }
}

/// The credential `mailbox add` was given: a certificate and its key, a client secret (from
/// a file or the environment) with its expiry, or none.
pub(super) fn credential(
    args: &CredentialArgs,
    io: &mut Console<'_>,
) -> anyhow::Result<Credential> {
    let env = io.env_secret.take();
    if let (Some(cert), Some(key)) = (&args.certificate, &args.private_key) {
        if env.as_ref().is_some_and(|v| !v.is_empty()) {
            writeln!(
                io.err,
                "warning: {CLIENT_SECRET_ENV} is ignored: the app proves itself with its \
                 certificate"
            )?;
        }
        let cert_pem = std::fs::read(cert)
            .with_context(|| format!("reading the certificate {}", cert.display()))?;
        let key_pem = Zeroizing::new(
            std::fs::read(key)
                .with_context(|| format!("reading the private key {}", key.display()))?,
        );
        let alg = args.assertion_alg.unwrap_or_default();
        let certificate =
            CertificateCredential::from_pem(&cert_pem, &key_pem, alg).with_context(|| {
                format!(
                    "--certificate {} --private-key {}",
                    cert.display(),
                    key.display()
                )
            })?;
        if certificate.not_after() <= unix_now() {
            bail!(
                "the certificate {} expired on {}; make a new one and upload it to the app \
                 registration",
                cert.display(),
                flows::utc(UNIX_EPOCH + Duration::from_secs(certificate.not_after()))
            );
        }
        return Ok(Credential::Certificate(certificate));
    }
    match client_secret(args.client_secret_file.as_deref(), env)? {
        Some(secret) => {
            if let Some(at) = args.secret_expires
                && at <= unix_now()
            {
                bail!(
                    "--secret-expires is in the past ({}): the secret no longer works; make a \
                     new one in the app registration",
                    flows::utc(UNIX_EPOCH + Duration::from_secs(at))
                );
            }
            Ok(Credential::Secret {
                secret,
                expires: args.secret_expires,
            })
        }
        None if args.secret_expires.is_some() => bail!(
            "--secret-expires needs a client secret (--client-secret-file or {CLIENT_SECRET_ENV})"
        ),
        None => Ok(Credential::None),
    }
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
