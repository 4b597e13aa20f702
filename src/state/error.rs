//! Why the state could not be opened, read or written. Errors name files and addresses,
//! never a secret or a line of a file.

use std::io;
use std::path::PathBuf;

use super::key::KeyError;
use super::seal::SealError;

/// Why the state could not be opened ([`super::open`], [`super::create`]).
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The state folder cannot be created or is not a folder.
    #[error("state_dir {}: {source}", dir.display())]
    Folder {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The state key cannot be read or made.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The state database cannot be opened, reached or migrated.
    #[error(transparent)]
    Database(#[from] super::postgres::database::DatabaseError),
}

/// Why the registry could not be read, written or changed. Names files and addresses,
/// never a secret or a line of the file.
#[derive(Debug, thiserror::Error)]
pub enum RegistryStoreError {
    #[error("{}: {source}", file.display())]
    Io {
        file: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is corrupt ({why}); fix or restore it, it is never reset", file.display())]
    Corrupt { file: PathBuf, why: String },
    #[error(
        "cannot decrypt the {what} of {address} in {}: {why}. The file is never \
         reset: restore the key it was sealed with",
        file.display()
    )]
    Undecryptable {
        file: PathBuf,
        address: String,
        /// `client secret` or `private key`.
        what: &'static str,
        why: SealError,
    },
    #[error(
        "{} is refused: {why}. It is never used nor reset: restore it from a backup, or check \
         it (`m365-relay mailbox list` shows what it holds once resealed) and run \
         `m365-relay state reseal --trust-current-file`",
        file.display()
    )]
    Unauthentic { file: PathBuf, why: SealError },
    #[error(
        "{} is refused: it has no MAC (format version {version}), but the registry of this key \
         was sealed before ({} exists), so an older or edited file was put in its place. It \
         is never used nor reset: restore it from a backup, or check it and run \
         `m365-relay state reseal --trust-current-file`",
        file.display(),
        marker.display()
    )]
    ReplacedAfterSealing {
        file: PathBuf,
        version: u32,
        marker: PathBuf,
    },
    #[error(
        "{} has no MAC (format version {version}) and is not sealed on its own: {why}. Check \
         it and run `m365-relay state reseal --trust-current-file`",
        file.display()
    )]
    CannotMigrate {
        file: PathBuf,
        version: u32,
        why: String,
    },
    #[error("cannot seal the {what} of {address}: {why}")]
    Seal {
        address: String,
        what: &'static str,
        why: SealError,
    },
    #[error("the certificate of {address} cannot be stored: {why}")]
    Certificate { address: String, why: String },
    /// A change the registry's rules refuse (a stored registry that breaks them is
    /// [`RegistryStoreError::Corrupt`]).
    #[error(transparent)]
    Mailbox(#[from] crate::mailbox::RegistryError),
    /// The state database could not be reached or refused the request.
    #[error(transparent)]
    Database(#[from] super::postgres::database::DatabaseError),
}

/// Why a token could not be read, written or removed: which file and why, never the token.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{}: {source}", file.display())]
    Io {
        file: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is corrupt ({why}); import the token again", file.display())]
    Corrupt { file: PathBuf, why: String },
    #[error(
        "cannot decrypt the refresh token in {}: {why}. It is kept as it is: restore the \
         key it was sealed with, or authorize the mailbox again",
        file.display()
    )]
    Undecryptable { file: PathBuf, why: SealError },
    #[error("cannot seal the refresh token of {mailbox}: {why}")]
    Seal { mailbox: String, why: SealError },
    #[error("refusing to store the refresh token of {mailbox}: it is {why}")]
    InvalidToken { mailbox: String, why: &'static str },
    #[error("`{mailbox}` cannot name a token file: {why}")]
    InvalidMailbox { mailbox: String, why: String },
    /// The state database could not be reached or refused the request.
    #[error(transparent)]
    Database(#[from] super::postgres::database::DatabaseError),
}
