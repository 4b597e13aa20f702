//! The token-endpoint errors the fake Entra returns, with Microsoft's AADSTS wording and JSON shape.
//!
//! Wording follows what Entra returns in the field (as quoted in public issue threads); the body has
//! the fields `error`, `error_description` (message, then Trace ID, Correlation ID and Timestamp on
//! `\r\n`-separated lines), `error_codes`, `timestamp`, `trace_id`, `correlation_id` and `error_uri`.

/// The fixed clock of the fakes.
pub const TIMESTAMP: &str = "2026-11-21 10:00:00Z";

/// An OAuth error as Entra reports it.
#[derive(Clone, Debug)]
pub struct EntraError {
    pub status: u16,
    pub error: String,
    pub code: u32,
    pub message: String,
}

#[derive(serde::Serialize)]
struct Body<'a> {
    error: &'a str,
    error_description: String,
    error_codes: [u32; 1],
    timestamp: &'a str,
    trace_id: &'a str,
    correlation_id: &'a str,
    error_uri: String,
}

impl EntraError {
    /// `message` is the text after `AADSTS<code>: `.
    pub fn new(status: u16, error: &str, code: u32, message: String) -> Self {
        Self {
            status,
            error: error.to_string(),
            code,
            message,
        }
    }

    /// The JSON body, with the given (trace id, correlation id).
    pub fn body(&self, (trace_id, correlation_id): (String, String)) -> String {
        let body = Body {
            error: &self.error,
            error_description: format!(
                "AADSTS{}: {}\r\nTrace ID: {trace_id}\r\nCorrelation ID: {correlation_id}\r\nTimestamp: {TIMESTAMP}",
                self.code, self.message
            ),
            error_codes: [self.code],
            timestamp: TIMESTAMP,
            trace_id: &trace_id,
            correlation_id: &correlation_id,
            error_uri: format!("https://login.microsoftonline.com/error?code={}", self.code),
        };
        serde_json::to_string(&body).expect("serialize Entra error")
    }
}

pub fn missing_parameter(name: &str) -> EntraError {
    let message = format!("The request body must contain the following parameter: '{name}'.");
    EntraError::new(400, "invalid_request", 900144, message)
}

pub fn tenant_not_found(tenant: &str) -> EntraError {
    let message = format!(
        "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the \
         correct cloud. Check with your subscription administrator, this may happen if there are no active \
         subscriptions for the tenant."
    );
    EntraError::new(400, "invalid_request", 90002, message)
}

pub fn unknown_client(client_id: &str, tenant: &str) -> EntraError {
    let message = format!(
        "Application with identifier '{client_id}' was not found in the directory '{tenant}'. This can happen if \
         the application has not been installed by the administrator of the tenant or consented to by any user \
         in the tenant. You may have sent your authentication request to the wrong tenant."
    );
    EntraError::new(400, "unauthorized_client", 700016, message)
}

pub fn public_client_with_secret() -> EntraError {
    let message =
        "Client is public so neither 'client_assertion' nor 'client_secret' should be presented.";
    EntraError::new(401, "invalid_client", 700025, message.to_string())
}

/// A confidential client that sent no credential at all (Entra uses 7000218 here, not 7000215).
pub fn missing_client_secret() -> EntraError {
    let message = "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.";
    EntraError::new(401, "invalid_client", 7000218, message.to_string())
}

pub fn invalid_client_secret(client_id: &str) -> EntraError {
    let message = format!(
        "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, \
         not the client secret ID, for a secret added to app '{client_id}'."
    );
    EntraError::new(401, "invalid_client", 7000215, message)
}

pub fn unsupported_grant_type(grant_type: &str) -> EntraError {
    let message = format!("The app requested an unsupported grant type '{grant_type}'.");
    EntraError::new(400, "unsupported_grant_type", 70003, message)
}

pub fn invalid_scope(scope: &str) -> EntraError {
    let message = format!(
        "The provided request must include a 'scope' input parameter. The provided value for the input \
         parameter 'scope' is not valid. The scope {scope} is not valid."
    );
    EntraError::new(400, "invalid_scope", 70011, message)
}

pub fn invalid_refresh_token() -> EntraError {
    let message =
        "The provided value for the input parameter 'refresh_token' or 'assertion' is not valid.";
    EntraError::new(400, "invalid_grant", 70000, message.to_string())
}

pub fn refresh_token_inactive() -> EntraError {
    let message = "The refresh token has expired due to inactivity. The token was issued on \
                   2026-08-23T10:00:00.0000000Z and was inactive for 90.00:00:00.";
    EntraError::new(400, "invalid_grant", 700082, message.to_string())
}

// === device code polls (RFC 8628 §3.5) ===

pub fn authorization_pending() -> EntraError {
    let message = "OAuth 2.0 device flow error. Authorization is pending. Continue polling.";
    EntraError::new(400, "authorization_pending", 70016, message.to_string())
}

/// Entra itself never sends `slow_down`; RFC 8628 servers may.
pub fn slow_down() -> EntraError {
    let message = "OAuth 2.0 device flow error. The client is polling too often. Slow down.";
    EntraError::new(400, "slow_down", 70016, message.to_string())
}

pub fn device_code_expired() -> EntraError {
    let message = "The provided value for the input parameter 'device_code' is not valid. This \
                   device code has expired.";
    EntraError::new(400, "expired_token", 70020, message.to_string())
}

pub fn authorization_declined() -> EntraError {
    let message = "The user declined to sign in to the app.";
    EntraError::new(400, "authorization_declined", 65004, message.to_string())
}

pub fn bad_verification_code() -> EntraError {
    let message = "The provided value for the input parameter 'device_code' is not valid.";
    EntraError::new(400, "bad_verification_code", 70018, message.to_string())
}

// === the authorization endpoint and authorization codes ===

/// Shown on Entra's error page, not sent to the redirect URI.
pub fn redirect_uri_mismatch(redirect_uri: &str, client_id: &str) -> EntraError {
    let message = format!(
        "The redirect URI '{redirect_uri}' specified in the request does not match the redirect URIs \
         configured for the application '{client_id}'. Make sure the redirect URI sent in the request \
         matches one added to your application in the Azure portal."
    );
    EntraError::new(400, "invalid_request", 50011, message)
}

pub fn unsupported_response_type() -> EntraError {
    let message = "The app returned an unsupported response type.";
    EntraError::new(400, "unsupported_response_type", 70005, message.to_string())
}

/// The fake insists on PKCE with S256 (the relay always sends it).
pub fn pkce_s256_required() -> EntraError {
    let message = "The code_challenge or code_challenge_method parameter is missing or not S256.";
    EntraError::new(400, "invalid_request", 50147, message.to_string())
}

pub fn login_required() -> EntraError {
    let message = "The user needs to sign in, and no login_hint was given.";
    EntraError::new(400, "login_required", 50058, message.to_string())
}

pub fn invalid_authorization_code() -> EntraError {
    let message = "The provided value for the 'code' parameter is not valid.";
    EntraError::new(400, "invalid_grant", 70000, message.to_string())
}

pub fn code_already_redeemed() -> EntraError {
    let message = "OAuth2 Authorization code was already redeemed, please retry with a new valid \
                   code or use an existing refresh token.";
    EntraError::new(400, "invalid_grant", 54005, message.to_string())
}

pub fn redirect_uri_differs(given: &str, expected: &str) -> EntraError {
    let message = format!(
        "The reply address '{given}' does not match the reply address '{expected}' provided when \
         requesting Authorization code."
    );
    EntraError::new(400, "invalid_grant", 500112, message)
}

pub fn pkce_mismatch() -> EntraError {
    let message = "The Code_Verifier does not match the code_challenge supplied in the authorization request.";
    EntraError::new(400, "invalid_grant", 501481, message.to_string())
}

// === client assertions (certificate credentials) and client credentials ===

pub fn secret_and_assertion() -> EntraError {
    let message = "Only one of 'client_assertion' and 'client_secret' may be presented.";
    EntraError::new(400, "invalid_request", 90023, message.to_string())
}

pub fn invalid_assertion_type(given: &str) -> EntraError {
    let message = format!(
        "The client_assertion_type '{given}' is not supported; use \
         'urn:ietf:params:oauth:client-assertion-type:jwt-bearer'."
    );
    EntraError::new(401, "invalid_client", 50027, message)
}

pub fn malformed_assertion() -> EntraError {
    let message = "JWT token is invalid or malformed.";
    EntraError::new(401, "invalid_client", 50027, message.to_string())
}

/// The thumbprint in the assertion names no certificate of the app.
pub fn assertion_key_not_found(thumbprint: &str) -> EntraError {
    let message = format!(
        "Client assertion failed signature validation. [Reason - The key was not found., \
         Thumbprint of key used by client: '{thumbprint}']"
    );
    EntraError::new(401, "invalid_client", 700027, message)
}

pub fn assertion_bad_signature() -> EntraError {
    let message = "Client assertion failed signature validation.";
    EntraError::new(401, "invalid_client", 700027, message.to_string())
}

pub fn assertion_wrong_audience(aud: &str) -> EntraError {
    let message =
        format!("Client assertion audience claim does not match Realm issuer. Audience: '{aud}'.");
    EntraError::new(401, "invalid_client", 700023, message)
}

pub fn assertion_wrong_client() -> EntraError {
    let message = "Client assertion application identifier doesn't match 'client_id' parameter.";
    EntraError::new(401, "invalid_client", 700021, message.to_string())
}

pub fn assertion_out_of_time() -> EntraError {
    let message = "Client assertion is not within its valid time range.";
    EntraError::new(401, "invalid_client", 700024, message.to_string())
}

/// A `jti` seen before. Entra documents no code for this case; the fake uses 50013
/// ("Assertion failed signature validation") with its own reason.
pub fn assertion_replayed() -> EntraError {
    let message = "Assertion failed signature validation. [Reason - The client assertion was \
                   already used (jti replay).]";
    EntraError::new(401, "invalid_client", 50013, message.to_string())
}

pub fn invalid_app_scope(scope: &str) -> EntraError {
    let message = format!(
        "The provided value for scope {scope} is not valid. Client credential flows must have a \
         scope value with /.default suffixed to the resource identifier (application ID URI)."
    );
    EntraError::new(400, "invalid_scope", 1002012, message)
}

/// A scope string that names more than one resource (e.g. Outlook's and Graph's).
pub fn more_than_one_resource(scope: &str) -> EntraError {
    let message = format!(
        "Provided value for the input parameter scope is not valid because it contains more than \
         one resource. Scope {scope} is not valid."
    );
    EntraError::new(400, "invalid_scope", 28000, message)
}
