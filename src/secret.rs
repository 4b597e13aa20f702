//! Redacting newtypes for everything that opens a mailbox: local passwords, OAuth tokens and
//! client secrets. Their `Debug` prints `[redacted]`, they have no `Display`, and their
//! memory is wiped on drop. Reading one takes an explicit `expose()`.

use secrecy::{ExposeSecret, SecretString};

macro_rules! secret_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone)]
        pub struct $name(SecretString);

        impl $name {
            pub fn new(value: impl Into<String>) -> Self {
                Self(SecretString::from(value.into()))
            }

            /// The secret itself. Call only where it is put on the wire or checked.
            pub fn expose(&self) -> &str {
                self.0.expose_secret()
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(concat!(stringify!($name), "([redacted])"))
            }
        }

        impl PartialEq for $name {
            /// Constant-time comparison.
            fn eq(&self, other: &Self) -> bool {
                constant_time_eq(self.expose().as_bytes(), other.expose().as_bytes())
            }
        }

        impl Eq for $name {}
    };
}

secret_type!(
    /// A local password that a legacy client presents to the relay.
    Password
);
secret_type!(
    /// An OAuth 2.0 access token for Exchange Online (or Graph).
    AccessToken
);
secret_type!(
    /// An OAuth 2.0 refresh token; Entra rotates it on every use.
    RefreshToken
);
secret_type!(
    /// A client secret of a confidential app registration.
    ClientSecret
);
secret_type!(
    /// A PostgreSQL connection URL, which may hold the database password.
    DatabaseUrl
);

/// Compares two byte strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(a, b).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_secret() {
        let token = AccessToken::new("eyJ0eXAiOiJKV1Qi.secret");
        let shown = format!("{token:?} {:?}", Password::new("hunter2"));
        assert_eq!(shown, "AccessToken([redacted]) Password([redacted])");
    }

    #[test]
    fn equality_compares_content() {
        assert_eq!(Password::new("a b"), Password::new("a b"));
        assert_ne!(Password::new("a b"), Password::new("a c"));
        assert_ne!(Password::new("a"), Password::new("ab"));
    }
}
