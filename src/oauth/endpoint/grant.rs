//! The grants a token request can carry, as small values: each names its `grant_type`
//! and adds its own fields to the form; the rest of the request (client, credential,
//! sending, reading the answer) is the same for all.

use url::form_urlencoded::Serializer;

use crate::secret::RefreshToken;

/// The grant type of a device code poll (RFC 8628 §3.4).
pub(super) const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// What a token request redeems. `Debug` is not derived: every variant but one holds a
/// secret.
pub(super) enum Grant<'a> {
    /// A refresh token (RFC 6749 §6), for the scopes asked.
    Refresh(&'a RefreshToken),
    /// The app's own permissions (RFC 6749 §4.4), for an app-only mailbox.
    ClientCredentials,
    /// An authorization code (RFC 6749 §4.1.3), with the PKCE verifier (RFC 7636 §4.5) and
    /// the redirect URI of its authorization request.
    Code {
        code: &'a str,
        verifier: &'a str,
        redirect_uri: &'a str,
    },
    /// The device code of a device code sign-in (RFC 8628 §3.4); it asks no scope.
    DeviceCode(&'a str),
}

impl Grant<'_> {
    /// The `grant_type` parameter.
    pub(super) fn grant_type(&self) -> &'static str {
        match self {
            Grant::Refresh(_) => "refresh_token",
            Grant::ClientCredentials => "client_credentials",
            Grant::Code { .. } => "authorization_code",
            Grant::DeviceCode(_) => DEVICE_CODE_GRANT,
        }
    }

    /// What the grant is called in the debug log.
    pub(super) fn name(&self) -> &'static str {
        match self {
            Grant::Refresh(_) => "refresh",
            Grant::ClientCredentials => "client credentials",
            Grant::Code { .. } => "code redemption",
            Grant::DeviceCode(_) => "device code poll",
        }
    }

    /// Adds the grant's own fields, and `scope` (space separated) for the grants that ask
    /// for scopes.
    pub(super) fn append_fields(&self, form: &mut Serializer<'_, String>, scopes: &[&str]) {
        match self {
            Grant::Refresh(token) => {
                form.append_pair("refresh_token", token.expose());
            }
            Grant::ClientCredentials => {}
            Grant::Code {
                code,
                verifier,
                redirect_uri,
            } => {
                form.append_pair("code", code)
                    .append_pair("code_verifier", verifier)
                    .append_pair("redirect_uri", redirect_uri);
            }
            Grant::DeviceCode(device_code) => {
                form.append_pair("device_code", device_code);
                return;
            }
        }
        if !scopes.is_empty() {
            form.append_pair("scope", &scopes.join(" "));
        }
    }
}
