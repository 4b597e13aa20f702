//! A [`PasswordVerifier`] in the registry file: binary values in standard base64, and the
//! serde functions a record's `password` field is read and written with.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};

use crate::mailbox::PasswordVerifier;

/// A [`PasswordVerifier`] as stored: binary values in standard base64.
#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
enum VerifierRecord {
    Generated { salt: String, hmac: String },
    Argon2 { phc: String },
}

impl VerifierRecord {
    fn of(v: PasswordVerifier) -> Self {
        match v {
            PasswordVerifier::Generated { salt, tag } => VerifierRecord::Generated {
                salt: BASE64.encode(salt),
                hmac: BASE64.encode(tag),
            },
            PasswordVerifier::Argon2 { phc } => VerifierRecord::Argon2 { phc },
        }
    }

    fn open(r: VerifierRecord) -> Result<PasswordVerifier, &'static str> {
        let bytes32 = |s: &str| -> Option<[u8; 32]> { BASE64.decode(s).ok()?.try_into().ok() };
        match r {
            VerifierRecord::Generated { salt, hmac } => Ok(PasswordVerifier::Generated {
                salt: bytes32(&salt).ok_or("password salt is not 32 bytes of base64")?,
                tag: bytes32(&hmac).ok_or("password hmac is not 32 bytes of base64")?,
            }),
            VerifierRecord::Argon2 { phc } => {
                argon2::password_hash::phc::PasswordHash::new(&phc)
                    .map_err(|_| "password phc is not a valid PHC string")?;
                Ok(PasswordVerifier::Argon2 { phc })
            }
        }
    }
}

/// How a record's `password` (`null` or a [`VerifierRecord`]) is read and written.
pub(super) mod serde_verifier {
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::VerifierRecord;
    use crate::mailbox::PasswordVerifier;

    pub fn serialize<S: Serializer>(v: &Option<PasswordVerifier>, s: S) -> Result<S::Ok, S::Error> {
        v.clone().map(VerifierRecord::of).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<PasswordVerifier>, D::Error> {
        Option::<VerifierRecord>::deserialize(d)?
            .map(VerifierRecord::open)
            .transpose()
            .map_err(D::Error::custom)
    }
}
