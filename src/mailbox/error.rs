//! Why a change to the mailbox registry, or an address, was refused.

/// Why a change to the registry was refused. Names addresses, never a secret.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(
        "mailbox {0} is app-only (client credentials) but its app has no client secret or \
         certificate"
    )]
    AppOnlyWithoutCredential(String),
    #[error("`{address}` is not a valid mailbox address: {why}")]
    InvalidAddress { address: String, why: &'static str },
    #[error("mailbox {0} is already registered")]
    Duplicate(String),
    #[error("mailbox {0} is not registered")]
    UnknownMailbox(String),
    #[error("mailbox {0} cannot take its token from itself")]
    OwnDelegate(String),
    #[error("mailbox {mailbox} takes its token from {delegate}, which is not registered")]
    MissingDelegate { mailbox: String, delegate: String },
    #[error(
        "mailbox {mailbox} takes its token from {delegate}, which takes its own from {next}: \
         only a mailbox with its own app registration can lend its token"
    )]
    DelegateChain {
        mailbox: String,
        delegate: String,
        /// Where the delegate takes its token from.
        next: String,
    },
}
