//! The fake Entra's data and grant logic: registered apps, client authentication (secret or
//! certificate assertion), refresh-token rotation chains, the client-credentials grant, issued
//! access tokens, the scope check, and the token minting; and the interactive sign-ins: device
//! codes (`/devicecode` and their polls), the authorization endpoint with PKCE, authorization codes,
//! and id_tokens. `fake_entra` wraps it in HTTP endpoints.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::entra_errors::{self as aadsts, EntraError};
use super::fake_entra::{AccessTokenInfo, DEFAULT_EXPIRES_IN, TokenRequest};

/// The grant type of a device code poll (RFC 8628 §3.4).
pub(super) const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// Where Entra's device codes are entered.
pub(super) const DEVICE_LOGIN: &str = "https://microsoft.com/devicelogin";

/// Lifetime of a device code, as Entra announces it.
const DEVICE_CODE_EXPIRES_IN: u64 = 900;

/// Poll interval the fake announces unless a test changes it (Entra says 5; 1 keeps tests fast).
pub(super) const DEFAULT_DEVICE_INTERVAL: u64 = 1;

/// A scripted answer to the next device code poll, before the normal logic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DevicePoll {
    Pending,
    SlowDown,
    Expired,
    Declined,
    BadCode,
}

/// A device code the fake issued, from `/devicecode` to its redemption.
pub(super) struct DeviceCode {
    pub(super) tenant: String,
    pub(super) client_id: String,
    pub(super) user_code: String,
    /// The scope asked for at `/devicecode`.
    pub(super) scope: String,
    pub(super) state: DeviceState,
    pub(super) polls: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum DeviceState {
    Pending,
    Approved(String),
    Declined,
    Expired,
    Redeemed,
}

/// An authorization code the fake issued at `/authorize`.
struct AuthCode {
    tenant: String,
    client_id: String,
    redirect_uri: String,
    /// The PKCE S256 challenge.
    challenge: String,
    scope: String,
    upn: String,
    redeemed: bool,
}

/// How the authorization endpoint answers the browser.
pub(super) enum AuthorizeAnswer {
    /// `302 Found` to this address (the redirect URI with `code` or `error`).
    Redirect(String),
    /// An error page, when the redirect URI cannot be trusted.
    Page(u16, String),
}

/// A registered application; with neither a secret nor a certificate it is a public client.
pub(super) struct App {
    pub(super) secret: Option<String>,
    /// The DER of the certificate uploaded for it, whose key signs its client assertions.
    pub(super) certificate: Option<Vec<u8>>,
}

/// `client_assertion_type` of a JWT client assertion (RFC 7523 §2.2).
pub(super) const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// The principal of app-only tokens in [`AccessTokenInfo::upn`]: `app:{client_id}`.
pub fn app_principal(client_id: &str) -> String {
    format!("app:{}", client_id.to_ascii_lowercase())
}

/// The application permissions (app roles) of Office 365 Exchange Online that the fake
/// grants to every client-credentials token, with the delegated scope each stands for.
pub(super) const APP_ROLES: [(&str, &str); 3] = [
    ("SMTP.SendAsApp", "SMTP.Send"),
    ("IMAP.AccessAsApp", "IMAP.AccessAsUser.All"),
    ("POP.AccessAsApp", "POP.AccessAsUser.All"),
];

/// The application permissions of Microsoft Graph that the fake grants to every
/// client-credentials token for `https://graph.microsoft.com/.default`.
pub(super) const GRAPH_APP_ROLES: [&str; 1] = ["Mail.Send"];

/// What the fake knows about a refresh token it issued. Tokens of one sign-in form a rotation
/// chain (`family`), numbered by `generation`.
pub(super) struct RefreshToken {
    pub(super) tenant: String,
    pub(super) client_id: String,
    pub(super) upn: String,
    pub(super) family: u64,
    pub(super) generation: u64,
    pub(super) status: RtStatus,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum RtStatus {
    Valid,
    Revoked,
    Expired,
    /// Redeemed once while refresh tokens are single-use ([`EntraState::single_use`]).
    Redeemed,
}

/// Everything the fake Entra knows, behind one std mutex (never held across an await).
pub(super) struct EntraState {
    random: RandomState,
    counter: u64,
    pub(super) apps: HashMap<(String, String), App>,
    pub(super) refresh_tokens: HashMap<String, RefreshToken>,
    /// family id → (generation, token) of the newest refresh token in that rotation chain.
    pub(super) latest: HashMap<u64, (u64, String)>,
    pub(super) access_tokens: HashMap<String, AccessTokenInfo>,
    pub(super) queued: VecDeque<(u16, String)>,
    pub(super) delay: Duration,
    /// upn (lower case) → delay for the token responses to that user's refresh tokens.
    pub(super) user_delays: HashMap<String, Duration>,
    pub(super) expires_in: u64,
    /// Refresh tokens are single-use: a redeemed one is refused like a revoked one.
    pub(super) single_use: bool,
    /// Refresh grants that presented a refresh token already redeemed (single-use).
    pub(super) reused: usize,
    pub(super) requests: Vec<TokenRequest>,
    pub(super) unmatched: Vec<String>,
    pub(super) in_flight: usize,
    pub(super) max_in_flight: usize,
    pub(super) device_codes: HashMap<String, DeviceCode>,
    pub(super) device_interval: u64,
    /// (after this many polls, sign in as this user) for device codes nobody approved.
    pub(super) device_auto_approve: Option<(u32, String)>,
    pub(super) device_script: VecDeque<DevicePoll>,
    auth_codes: HashMap<String, AuthCode>,
    /// The user "signed in" in the fake browser; `None` signs in as the `login_hint`.
    pub(super) signed_in_as: Option<String>,
    /// The query of every request to `/authorize`.
    pub(super) authorize_requests: Vec<BTreeMap<String, String>>,
    /// The form of every request to `/devicecode`.
    pub(super) device_code_requests: Vec<BTreeMap<String, String>>,
    /// The resource hosts scopes may name (the cloud the fake plays).
    pub(super) scope_hosts: Vec<String>,
    /// Every `jti` of a client assertion accepted so far (a second use is a replay).
    used_jtis: HashSet<String>,
}

pub(super) const OUTLOOK: &str = "https://outlook.office.com/";
const OUTLOOK_365: &str = "https://outlook.office365.com/";
const MAIL_SCOPES: [&str; 3] = ["SMTP.Send", "IMAP.AccessAsUser.All", "POP.AccessAsUser.All"];
/// Microsoft Graph, the second resource the fake issues tokens for (`aud` without the slash).
pub(super) const GRAPH: &str = "https://graph.microsoft.com/";
/// The delegated Graph permissions the fake knows (PROTOCOL.md A11).
const GRAPH_SCOPES: [&str; 2] = ["Mail.Send", "Mail.Send.Shared"];
const OIDC_SCOPES: [&str; 4] = ["offline_access", "openid", "profile", "email"];

/// A client-credentials token response: no refresh token, no scope (as Entra sends it).
#[derive(serde::Serialize)]
struct AppTokenSuccess<'a> {
    token_type: &'a str,
    expires_in: u64,
    ext_expires_in: u64,
    access_token: String,
}

/// A successful token response, fields in the order Entra sends them.
#[derive(serde::Serialize)]
struct TokenSuccess<'a> {
    token_type: &'a str,
    scope: String,
    expires_in: u64,
    ext_expires_in: u64,
    access_token: String,
    refresh_token: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    id_token: Option<String>,
}

impl EntraState {
    pub(super) fn new() -> Self {
        Self {
            random: RandomState::new(),
            counter: 0,
            apps: HashMap::new(),
            refresh_tokens: HashMap::new(),
            latest: HashMap::new(),
            access_tokens: HashMap::new(),
            queued: VecDeque::new(),
            delay: Duration::ZERO,
            user_delays: HashMap::new(),
            expires_in: DEFAULT_EXPIRES_IN,
            single_use: false,
            reused: 0,
            requests: Vec::new(),
            unmatched: Vec::new(),
            in_flight: 0,
            max_in_flight: 0,
            device_codes: HashMap::new(),
            device_interval: DEFAULT_DEVICE_INTERVAL,
            device_auto_approve: None,
            device_script: VecDeque::new(),
            auth_codes: HashMap::new(),
            signed_in_as: None,
            authorize_requests: Vec::new(),
            device_code_requests: Vec::new(),
            scope_hosts: vec![OUTLOOK.to_string(), OUTLOOK_365.to_string()],
            used_jtis: HashSet::new(),
        }
    }

    /// Answers one token request and records it. `form` is None when the body was not a form.
    /// `authority` is the fake's base URL (client assertions are addressed to its token URL).
    pub(super) fn answer(
        &mut self,
        tenant: &str,
        form: Option<BTreeMap<String, String>>,
        authority: &str,
    ) -> (u16, String) {
        let form_given = form.is_some();
        let form = form.unwrap_or_default();
        let mut stale = false;
        let (status, body) = if let Some(queued) = self.queued.pop_front() {
            queued
        } else if !form_given {
            self.error_body(aadsts::missing_parameter("grant_type"))
        } else {
            match self.grant(tenant, &form, &mut stale, authority) {
                Ok(body) => (200, body),
                Err(err) => self.error_body(err),
            }
        };
        self.requests.push(TokenRequest {
            tenant: tenant.to_string(),
            form,
            status,
            stale_refresh_token: stale,
            at: Instant::now(),
        });
        (status, body)
    }

    /// How long to hold the answer to a request that presented `refresh_token`: its
    /// user's own delay, else the general one.
    pub(super) fn delay_for(&self, refresh_token: Option<&str>) -> Duration {
        refresh_token
            .and_then(|rt| self.refresh_tokens.get(rt))
            .and_then(|info| self.user_delays.get(&info.upn.to_ascii_lowercase()))
            .copied()
            .unwrap_or(self.delay)
    }

    fn error_body(&mut self, err: EntraError) -> (u16, String) {
        let ids = (self.guid(), self.guid());
        (err.status, err.body(ids))
    }

    fn grant(
        &mut self,
        tenant: &str,
        form: &BTreeMap<String, String>,
        stale: &mut bool,
        authority: &str,
    ) -> Result<String, EntraError> {
        let param = |name: &str| form.get(name).map(String::as_str).filter(|v| !v.is_empty());
        let grant_type =
            param("grant_type").ok_or_else(|| aadsts::missing_parameter("grant_type"))?;
        if !self.apps.keys().any(|(t, _)| t == tenant) {
            return Err(aadsts::tenant_not_found(tenant));
        }
        let client_id = param("client_id").ok_or_else(|| aadsts::missing_parameter("client_id"))?;
        let app = self
            .apps
            .get(&(tenant.to_string(), client_id.to_string()))
            .ok_or_else(|| aadsts::unknown_client(client_id, tenant))?;
        let (secret, certificate) = (app.secret.clone(), app.certificate.clone());
        let public = secret.is_none() && certificate.is_none();
        match (param("client_secret"), param("client_assertion")) {
            (None, None) if public => {}
            (_, _) if public => return Err(aadsts::public_client_with_secret()),
            (None, None) => return Err(aadsts::missing_client_secret()),
            (Some(given), None) if secret.as_deref() == Some(given) => {}
            (Some(_), None) => return Err(aadsts::invalid_client_secret(client_id)),
            (Some(_), Some(_)) => return Err(aadsts::secret_and_assertion()),
            (None, Some(jwt)) => {
                let token_url = format!("{authority}/{tenant}/oauth2/v2.0/token");
                let kind = param("client_assertion_type");
                self.check_assertion(client_id, certificate.as_deref(), kind, jwt, &token_url)?;
            }
        }
        match grant_type {
            "refresh_token" => {}
            DEVICE_CODE_GRANT => return self.device_code_grant(tenant, client_id, form),
            "authorization_code" => return self.code_grant(tenant, client_id, form),
            "client_credentials" if public => return Err(aadsts::missing_client_secret()),
            "client_credentials" => return self.client_credentials_grant(tenant, client_id, form),
            other => return Err(aadsts::unsupported_grant_type(other)),
        }
        let scope = param("scope").ok_or_else(|| aadsts::missing_parameter("scope"))?;
        let granted = granted_scopes(&self.scope_hosts, scope)?;
        let presented =
            param("refresh_token").ok_or_else(|| aadsts::missing_parameter("refresh_token"))?;

        let (upn, family, generation) = match self.refresh_tokens.get(presented) {
            Some(rt) if rt.tenant == tenant && rt.client_id == client_id => match rt.status {
                RtStatus::Valid => (rt.upn.clone(), rt.family, rt.generation),
                RtStatus::Expired => return Err(aadsts::refresh_token_inactive()),
                RtStatus::Revoked => return Err(aadsts::invalid_refresh_token()),
                RtStatus::Redeemed => {
                    self.reused += 1;
                    return Err(aadsts::invalid_refresh_token());
                }
            },
            _ => return Err(aadsts::invalid_refresh_token()),
        };
        let newest = self.latest.get(&family).map_or(generation, |(g, _)| *g);
        *stale = generation < newest;
        let access_token = self.mint_access_token(tenant, client_id, &upn, granted.clone());
        let refresh_token = self.mint_refresh_token(tenant, client_id, &upn, family, newest + 1);
        if self.single_use
            && let Some(redeemed) = self.refresh_tokens.get_mut(presented)
        {
            redeemed.status = RtStatus::Redeemed;
        }
        let success = TokenSuccess {
            token_type: "Bearer",
            scope: granted.join(" "),
            expires_in: self.expires_in,
            ext_expires_in: self.expires_in,
            access_token,
            refresh_token,
            id_token: None,
        };
        Ok(serde_json::to_string(&success).expect("serialize token response"))
    }

    /// Checks a client assertion (Microsoft's "certificate credentials" rules): its type, a
    /// PS256 or RS256 JWT whose `x5t#S256` or `x5t` names the app's certificate and whose
    /// signature that certificate's key verifies; `aud` the token URL, `iss` = `sub` = the
    /// client, `exp` in the future, `nbf` and `iat` not, and a `jti` never seen before.
    fn check_assertion(
        &mut self,
        client_id: &str,
        certificate: Option<&[u8]>,
        kind: Option<&str>,
        jwt: &str,
        token_url: &str,
    ) -> Result<(), EntraError> {
        use aws_lc_rs::digest::{SHA1_FOR_LEGACY_USE_ONLY, SHA256, digest};
        use aws_lc_rs::signature::{
            RSA_PKCS1_2048_8192_SHA256, RSA_PSS_2048_8192_SHA256, UnparsedPublicKey,
        };
        use base64::Engine as _;
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;

        if kind != Some(JWT_BEARER) {
            return Err(aadsts::invalid_assertion_type(kind.unwrap_or_default()));
        }
        let malformed = || aadsts::malformed_assertion();
        let parts: Vec<&str> = jwt.split('.').collect();
        let [header, claims, signature] = parts[..] else {
            return Err(malformed());
        };
        let json = |part: &str| -> Result<serde_json::Value, EntraError> {
            let bytes = URL_SAFE_NO_PAD.decode(part).map_err(|_| malformed())?;
            serde_json::from_slice(&bytes).map_err(|_| malformed())
        };
        let (header_json, claims) = (json(header)?, json(claims)?);
        let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| malformed())?;
        let given = |name: &str| header_json[name].as_str().map(str::to_owned);
        let thumbprint = given("x5t#S256")
            .or_else(|| given("x5t"))
            .unwrap_or_default();
        let Some(der) = certificate else {
            return Err(aadsts::assertion_key_not_found(&thumbprint));
        };
        let ours_s256 = URL_SAFE_NO_PAD.encode(digest(&SHA256, der));
        let ours_sha1 = URL_SAFE_NO_PAD.encode(digest(&SHA1_FOR_LEGACY_USE_ONLY, der));
        let names_ours = match (given("x5t#S256"), given("x5t")) {
            (Some(s256), _) => s256 == ours_s256,
            (None, Some(sha1)) => sha1 == ours_sha1,
            (None, None) => false,
        };
        if !names_ours {
            return Err(aadsts::assertion_key_not_found(&thumbprint));
        }
        let algorithm = match header_json["alg"].as_str() {
            Some("PS256") => &RSA_PSS_2048_8192_SHA256,
            Some("RS256") => &RSA_PKCS1_2048_8192_SHA256,
            _ => return Err(malformed()),
        };
        let (_, cert) = x509_parser::parse_x509_certificate(der).expect("registered certificate");
        let key = UnparsedPublicKey::new(
            algorithm,
            cert.public_key().subject_public_key.data.to_vec(),
        );
        let signed = &jwt[..header.len() + 1 + parts[1].len()];
        if key.verify(signed.as_bytes(), &signature).is_err() {
            return Err(aadsts::assertion_bad_signature());
        }
        let claim = |name: &str| claims[name].as_str().unwrap_or_default().to_owned();
        if claim("aud") != token_url {
            return Err(aadsts::assertion_wrong_audience(&claim("aud")));
        }
        if !claim("iss").eq_ignore_ascii_case(client_id) || claim("sub") != claim("iss") {
            return Err(aadsts::assertion_wrong_client());
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let time = |name: &str| claims[name].as_u64();
        let in_range = time("exp").is_some_and(|exp| exp > now)
            && time("nbf").is_some_and(|nbf| nbf <= now)
            && time("iat").is_some_and(|iat| iat <= now);
        if !in_range {
            return Err(aadsts::assertion_out_of_time());
        }
        let jti = claim("jti");
        if jti.is_empty() {
            return Err(malformed());
        }
        if !self.used_jtis.insert(jti) {
            return Err(aadsts::assertion_replayed());
        }
        Ok(())
    }

    /// The client-credentials grant (the client is already authenticated, and confidential):
    /// `scope` must be one resource's `.default`; the token carries the mail app roles.
    fn client_credentials_grant(
        &mut self,
        tenant: &str,
        client_id: &str,
        form: &BTreeMap<String, String>,
    ) -> Result<String, EntraError> {
        let scope = form
            .get("scope")
            .filter(|v| !v.is_empty())
            .ok_or_else(|| aadsts::missing_parameter("scope"))?;
        let default = self
            .scope_hosts
            .iter()
            .any(|host| *scope == format!("{host}.default"));
        let access_token = if default {
            self.mint_app_token(tenant, client_id)
        } else if *scope == format!("{GRAPH}.default") {
            self.mint_graph_app_token(tenant, client_id)
        } else {
            return Err(aadsts::invalid_app_scope(scope));
        };
        let success = AppTokenSuccess {
            token_type: "Bearer",
            expires_in: self.expires_in,
            ext_expires_in: self.expires_in,
            access_token,
        };
        Ok(serde_json::to_string(&success).expect("serialize token response"))
    }

    /// An app-only access token for Exchange Online: `roles` instead of `scp`, no user.
    pub(super) fn mint_app_token(&mut self, tenant: &str, client_id: &str) -> String {
        let roles: Vec<&str> = APP_ROLES.iter().map(|(role, _)| *role).collect();
        self.mint_app_token_for(tenant, client_id, "https://outlook.office365.com", &roles)
    }

    /// An app-only access token for Microsoft Graph, with the role `Mail.Send`.
    pub(super) fn mint_graph_app_token(&mut self, tenant: &str, client_id: &str) -> String {
        let audience = GRAPH.trim_end_matches('/');
        self.mint_app_token_for(tenant, client_id, audience, &GRAPH_APP_ROLES)
    }

    /// An app-only access token for `audience` carrying `roles`.
    pub(super) fn mint_app_token_for(
        &mut self,
        tenant: &str,
        client_id: &str,
        audience: &str,
        roles: &[&str],
    ) -> String {
        let serial = self.next();
        let noise = self.noise();
        let header = format!(
            r#"{{"typ":"JWT","nonce":"{noise:016x}","alg":"RS256","x5t":"fake","kid":"fake"}}"#
        );
        let payload = serde_json::json!({
            "aud": audience,
            "iss": format!("https://sts.windows.net/{tenant}/"),
            "appid": client_id,
            "roles": roles,
            "serial": serial,
            "pad": "p".repeat(900),
        });
        let token = format!(
            "{}.{}.{}~{serial}",
            b64url(header.as_bytes()),
            b64url(payload.to_string().as_bytes()),
            b64url(&noise.to_be_bytes())
        );
        let info = AccessTokenInfo {
            tenant: tenant.to_string(),
            client_id: client_id.to_string(),
            upn: app_principal(client_id),
            audience: audience.to_string(),
            scopes: Vec::new(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            expired: false,
            revoked: false,
        };
        self.access_tokens.insert(token.clone(), info);
        token
    }

    pub(super) fn next(&mut self) -> u64 {
        self.counter += 1;
        self.counter
    }

    fn noise(&mut self) -> u64 {
        let n = self.next();
        self.random.hash_one(n)
    }

    pub(super) fn guid(&mut self) -> String {
        let (a, b) = (self.noise(), self.noise());
        format!(
            "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            b >> 52,
            b & 0xffff_ffff_ffff
        )
    }

    pub(super) fn mint_refresh_token(
        &mut self,
        tenant: &str,
        client_id: &str,
        upn: &str,
        family: u64,
        generation: u64,
    ) -> String {
        let serial = self.next();
        let noise = self.noise();
        // Real refresh tokens are opaque, about 1 KB, and start with "1.A" or "0.A".
        let opaque = format!(
            "{serial}|{family}|{generation}|{noise:016x}|{}",
            "r".repeat(600)
        );
        let token = format!("1.AXEA{}", b64url(opaque.as_bytes()));
        let info = RefreshToken {
            tenant: tenant.to_string(),
            client_id: client_id.to_string(),
            upn: upn.to_string(),
            family,
            generation,
            status: RtStatus::Valid,
        };
        self.refresh_tokens.insert(token.clone(), info);
        self.latest.insert(family, (generation, token.clone()));
        token
    }

    pub(super) fn mint_access_token(
        &mut self,
        tenant: &str,
        client_id: &str,
        upn: &str,
        scopes: Vec<String>,
    ) -> String {
        let serial = self.next();
        let noise = self.noise();
        // Shaped like Entra's (unverifiable) JWTs for Exchange Online, about 2 KB long.
        let header = format!(
            r#"{{"typ":"JWT","nonce":"{noise:016x}","alg":"RS256","x5t":"fake","kid":"fake"}}"#
        );
        // Every scope names one resource (granted_scopes sees to that): it is the audience.
        let resource = if scopes.iter().any(|s| s.starts_with(GRAPH)) {
            GRAPH
        } else {
            OUTLOOK
        };
        let audience = resource.trim_end_matches('/').to_string();
        let short: Vec<_> = scopes
            .iter()
            .map(|s| s.trim_start_matches(resource))
            .collect();
        let payload = serde_json::json!({
            "aud": audience,
            "iss": format!("https://sts.windows.net/{tenant}/"),
            "appid": client_id,
            "upn": upn,
            "scp": short.join(" "),
            "serial": serial,
            "pad": "p".repeat(900),
        });
        let signature: Vec<u8> = (0..256u64)
            .map(|i| (noise.rotate_left(i as u32 % 64) ^ i) as u8)
            .collect();
        let token = format!(
            "{}.{}.{}~{serial}",
            b64url(header.as_bytes()),
            b64url(payload.to_string().as_bytes()),
            b64url(&signature)
        );
        let info = AccessTokenInfo {
            tenant: tenant.to_string(),
            client_id: client_id.to_string(),
            upn: upn.to_string(),
            audience,
            scopes,
            roles: Vec::new(),
            expired: false,
            revoked: false,
        };
        self.access_tokens.insert(token.clone(), info);
        token
    }
}

// === the interactive sign-ins ===

impl EntraState {
    /// Answers `POST /{tenant}/oauth2/v2.0/devicecode` (RFC 8628 §3.1) and records the form.
    pub(super) fn device_authorization(
        &mut self,
        tenant: &str,
        form: Option<BTreeMap<String, String>>,
    ) -> (u16, String) {
        let form = form.unwrap_or_default();
        self.device_code_requests.push(form.clone());
        match self.issue_device_code(tenant, &form) {
            Ok(body) => (200, body),
            Err(err) => self.error_body(err),
        }
    }

    fn issue_device_code(
        &mut self,
        tenant: &str,
        form: &BTreeMap<String, String>,
    ) -> Result<String, EntraError> {
        let param = |name: &str| form.get(name).map(String::as_str).filter(|v| !v.is_empty());
        if !self.apps.keys().any(|(t, _)| t == tenant) {
            return Err(aadsts::tenant_not_found(tenant));
        }
        let client_id = param("client_id").ok_or_else(|| aadsts::missing_parameter("client_id"))?;
        if !self
            .apps
            .contains_key(&(tenant.to_string(), client_id.to_string()))
        {
            return Err(aadsts::unknown_client(client_id, tenant));
        }
        let scope = param("scope").ok_or_else(|| aadsts::missing_parameter("scope"))?;
        granted_scopes(&self.scope_hosts, scope)?;
        // Entra's user codes are 9 letters and digits without look-alikes.
        const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
        let mut noise = self.noise();
        let user_code: String = (0..9)
            .map(|_| {
                let c = ALPHABET[(noise % ALPHABET.len() as u64) as usize] as char;
                noise /= ALPHABET.len() as u64;
                c
            })
            .collect();
        let serial = self.next();
        let device_code = format!(
            "DAQABIQEAAAD{}",
            b64url(format!("{serial}|{:016x}|{}", self.noise(), "d".repeat(200)).as_bytes())
        );
        self.device_codes.insert(
            device_code.clone(),
            DeviceCode {
                tenant: tenant.to_string(),
                client_id: client_id.to_string(),
                user_code: user_code.clone(),
                scope: scope.to_string(),
                state: DeviceState::Pending,
                polls: 0,
            },
        );
        let body = serde_json::json!({
            "user_code": user_code,
            "device_code": device_code,
            "verification_uri": DEVICE_LOGIN,
            "expires_in": DEVICE_CODE_EXPIRES_IN,
            "interval": self.device_interval,
            "message": format!(
                "To sign in, use a web browser to open the page {DEVICE_LOGIN} and enter the code \
                 {user_code} to authenticate."
            ),
        });
        Ok(body.to_string())
    }

    /// One poll of a device code (the client is already authenticated).
    fn device_code_grant(
        &mut self,
        tenant: &str,
        client_id: &str,
        form: &BTreeMap<String, String>,
    ) -> Result<String, EntraError> {
        let presented = form
            .get("device_code")
            .filter(|v| !v.is_empty())
            .ok_or_else(|| aadsts::missing_parameter("device_code"))?;
        let auto = self.device_auto_approve.clone();
        let scripted = self.device_script.pop_front();
        let code = match self.device_codes.get_mut(presented.as_str()) {
            Some(code) if code.tenant == tenant && code.client_id == client_id => code,
            _ => return Err(aadsts::bad_verification_code()),
        };
        code.polls += 1;
        match scripted {
            Some(DevicePoll::Pending) => return Err(aadsts::authorization_pending()),
            Some(DevicePoll::SlowDown) => return Err(aadsts::slow_down()),
            Some(DevicePoll::Expired) => return Err(aadsts::device_code_expired()),
            Some(DevicePoll::Declined) => return Err(aadsts::authorization_declined()),
            Some(DevicePoll::BadCode) => return Err(aadsts::bad_verification_code()),
            None => {}
        }
        if code.state == DeviceState::Pending
            && let Some((after, upn)) = auto
            && code.polls >= after
        {
            code.state = DeviceState::Approved(upn);
        }
        let upn = match &code.state {
            DeviceState::Pending => return Err(aadsts::authorization_pending()),
            DeviceState::Declined => return Err(aadsts::authorization_declined()),
            DeviceState::Expired => return Err(aadsts::device_code_expired()),
            DeviceState::Redeemed => return Err(aadsts::bad_verification_code()),
            DeviceState::Approved(upn) => upn.clone(),
        };
        code.state = DeviceState::Redeemed;
        let scope = code.scope.clone();
        self.sign_in_success(tenant, client_id, &upn, &scope)
    }

    /// Marks the device code with `user_code` as approved by `upn` (or declined, or expired).
    pub(super) fn set_device_state(&mut self, user_code: &str, state: DeviceState) {
        let code = self
            .device_codes
            .values_mut()
            .find(|c| c.user_code.eq_ignore_ascii_case(user_code.trim()))
            .unwrap_or_else(|| {
                panic!("fake entra issued no device code with user code {user_code:?}")
            });
        code.state = state;
    }

    /// Answers `GET /{tenant}/oauth2/v2.0/authorize` as if the user signed in at once: as the
    /// forced user ([`EntraState::signed_in_as`]) or else as the `login_hint`.
    pub(super) fn authorize(
        &mut self,
        tenant: &str,
        query: BTreeMap<String, String>,
        authority: &str,
    ) -> AuthorizeAnswer {
        self.authorize_requests.push(query.clone());
        let param = |name: &str| {
            query
                .get(name)
                .map(String::as_str)
                .filter(|v| !v.is_empty())
        };
        let page = |err: EntraError| {
            AuthorizeAnswer::Page(err.status, format!("AADSTS{}: {}", err.code, err.message))
        };
        if !self.apps.keys().any(|(t, _)| t == tenant) {
            return page(aadsts::tenant_not_found(tenant));
        }
        let Some(client_id) = param("client_id") else {
            return page(aadsts::missing_parameter("client_id"));
        };
        if !self
            .apps
            .contains_key(&(tenant.to_string(), client_id.to_string()))
        {
            return page(aadsts::unknown_client(client_id, tenant));
        }
        let Some(redirect_uri) = param("redirect_uri") else {
            return page(aadsts::missing_parameter("redirect_uri"));
        };
        if !redirect_allowed(redirect_uri, authority) {
            return page(aadsts::redirect_uri_mismatch(redirect_uri, client_id));
        }
        // From here on errors go back to the app, with its state.
        let state = param("state").unwrap_or_default().to_string();
        let redirect = |pairs: &[(&str, &str)]| {
            let mut url = url::Url::parse(redirect_uri).expect("checked redirect URI");
            url.query_pairs_mut().extend_pairs(pairs);
            AuthorizeAnswer::Redirect(url.to_string())
        };
        let refuse = |err: EntraError| {
            let description = format!("AADSTS{}: {}", err.code, err.message);
            redirect(&[
                ("error", err.error.as_str()),
                ("error_description", description.as_str()),
                ("state", state.as_str()),
            ])
        };
        if param("response_type") != Some("code") {
            return refuse(aadsts::unsupported_response_type());
        }
        if state.is_empty() {
            return refuse(aadsts::missing_parameter("state"));
        }
        let challenge = match (param("code_challenge"), param("code_challenge_method")) {
            (Some(c), Some("S256")) if c.len() == 43 => c.to_string(),
            _ => return refuse(aadsts::pkce_s256_required()),
        };
        let Some(scope) = param("scope") else {
            return refuse(aadsts::missing_parameter("scope"));
        };
        if let Err(err) = granted_scopes(&self.scope_hosts, scope) {
            return refuse(err);
        }
        let Some(upn) = self
            .signed_in_as
            .clone()
            .or_else(|| param("login_hint").map(str::to_string))
        else {
            return refuse(aadsts::login_required());
        };
        let serial = self.next();
        let code = format!(
            "1.AQ{}",
            b64url(format!("{serial}|{:016x}|{}", self.noise(), "c".repeat(300)).as_bytes())
        );
        self.auth_codes.insert(
            code.clone(),
            AuthCode {
                tenant: tenant.to_string(),
                client_id: client_id.to_string(),
                redirect_uri: redirect_uri.to_string(),
                challenge,
                scope: scope.to_string(),
                upn,
                redeemed: false,
            },
        );
        let session_state = self.guid();
        redirect(&[
            ("code", code.as_str()),
            ("state", state.as_str()),
            ("session_state", session_state.as_str()),
        ])
    }

    /// Redeems an authorization code (the client is already authenticated).
    fn code_grant(
        &mut self,
        tenant: &str,
        client_id: &str,
        form: &BTreeMap<String, String>,
    ) -> Result<String, EntraError> {
        let param = |name: &str| form.get(name).map(String::as_str).filter(|v| !v.is_empty());
        let presented = param("code").ok_or_else(|| aadsts::missing_parameter("code"))?;
        let redirect_uri =
            param("redirect_uri").ok_or_else(|| aadsts::missing_parameter("redirect_uri"))?;
        let code = match self.auth_codes.get_mut(presented) {
            Some(code) if code.tenant == tenant && code.client_id == client_id => code,
            _ => return Err(aadsts::invalid_authorization_code()),
        };
        if code.redeemed {
            return Err(aadsts::code_already_redeemed());
        }
        if code.redirect_uri != redirect_uri {
            return Err(aadsts::redirect_uri_differs(
                redirect_uri,
                &code.redirect_uri,
            ));
        }
        let verifier = param("code_verifier").unwrap_or_default();
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes());
        if b64url(digest.as_ref()) != code.challenge {
            return Err(aadsts::pkce_mismatch());
        }
        code.redeemed = true;
        let (upn, scope) = (code.upn.clone(), code.scope.clone());
        self.sign_in_success(tenant, client_id, &upn, &scope)
    }

    /// The token response of a fresh sign-in of `upn`: a new refresh-token chain, and an
    /// id_token when `openid` was asked for.
    fn sign_in_success(
        &mut self,
        tenant: &str,
        client_id: &str,
        upn: &str,
        scope: &str,
    ) -> Result<String, EntraError> {
        let granted = granted_scopes(&self.scope_hosts, scope)?;
        let access_token = self.mint_access_token(tenant, client_id, upn, granted.clone());
        let family = self.next();
        let refresh_token = self.mint_refresh_token(tenant, client_id, upn, family, 0);
        let id_token = scope
            .split_whitespace()
            .any(|s| s == "openid")
            .then(|| self.mint_id_token(tenant, client_id, upn));
        let success = TokenSuccess {
            token_type: "Bearer",
            scope: granted.join(" "),
            expires_in: self.expires_in,
            ext_expires_in: self.expires_in,
            access_token,
            refresh_token,
            id_token,
        };
        Ok(serde_json::to_string(&success).expect("serialize token response"))
    }

    /// An id_token shaped like Entra's v2.0 ones; the signature is a dummy.
    fn mint_id_token(&mut self, tenant: &str, client_id: &str, upn: &str) -> String {
        let tid = self.stable_guid(tenant);
        let oid = self.stable_guid(&upn.to_ascii_lowercase());
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let local = upn.split('@').next().unwrap_or(upn);
        let name: String = local
            .chars()
            .take(1)
            .flat_map(char::to_uppercase)
            .chain(local.chars().skip(1))
            .collect();
        let header = r#"{"typ":"JWT","alg":"RS256","kid":"fake"}"#;
        let payload = serde_json::json!({
            "aud": client_id,
            "iss": format!("https://login.microsoftonline.com/{tid}/v2.0"),
            "iat": now,
            "nbf": now,
            "exp": now + 3600,
            "name": name,
            "oid": oid,
            "preferred_username": upn,
            "sub": b64url(format!("{client_id}|{oid}").as_bytes()),
            "tid": tid,
            "ver": "2.0",
        });
        format!(
            "{}.{}.{}",
            b64url(header.as_bytes()),
            b64url(payload.to_string().as_bytes()),
            b64url(b"not a real signature")
        )
    }

    /// A GUID that is the same for the same `seed` during one test.
    fn stable_guid(&self, seed: &str) -> String {
        let (a, b) = (self.random.hash_one(seed), self.random.hash_one((seed, 1)));
        format!(
            "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            b >> 52,
            b & 0xffff_ffff_ffff
        )
    }
}

/// The redirect URIs the fake app registrations accept: a loopback one (any port, as Entra
/// treats `http://localhost` for public clients) and the native client page.
fn redirect_allowed(uri: &str, authority: &str) -> bool {
    let Ok(url) = url::Url::parse(uri) else {
        return false;
    };
    let loopback = url.scheme() == "http"
        && matches!(url.host_str(), Some("localhost" | "127.0.0.1"))
        && url.query().is_none();
    let native = [authority, "https://login.microsoftonline.com"]
        .iter()
        .any(|a| uri == format!("{a}/common/oauth2/nativeclient"));
    loopback || native
}

fn b64url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The serial number appended to every access token (for ordering).
pub(super) fn token_serial(token: &str) -> u64 {
    token
        .rsplit('~')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Checks a requested `scope` and returns the granted scopes. The mail scopes name
/// resources on `hosts` and are granted `https://outlook.office.com/`-prefixed whatever the
/// host; Graph's (`https://graph.microsoft.com/Mail.Send`, `Mail.Send.Shared`) keep their
/// prefix. `offline_access` and the OpenID scopes are left out. As Entra does, one request
/// may name one resource only (AADSTS28000).
fn granted_scopes(hosts: &[String], requested: &str) -> Result<Vec<String>, EntraError> {
    let items: Vec<&str> = requested
        .split_whitespace()
        .filter(|s| !OIDC_SCOPES.contains(s))
        .collect();
    let graph_items = items.iter().filter(|s| s.starts_with(GRAPH)).count();
    if graph_items == 0 {
        return granted_mail_scopes(hosts, requested, &items);
    }
    if graph_items < items.len() {
        return Err(aadsts::more_than_one_resource(requested));
    }
    let mut granted: Vec<String> = Vec::new();
    for item in &items {
        let name = &item[GRAPH.len()..];
        if name == ".default" {
            if items.len() > 1 {
                return Err(aadsts::invalid_scope(requested));
            }
            granted.extend(GRAPH_SCOPES.iter().map(|s| format!("{GRAPH}{s}")));
            continue;
        }
        let canonical = GRAPH_SCOPES
            .iter()
            .find(|known| known.eq_ignore_ascii_case(name))
            .ok_or_else(|| aadsts::invalid_scope(requested))?;
        let full = format!("{GRAPH}{canonical}");
        if !granted.contains(&full) {
            granted.push(full);
        }
    }
    Ok(granted)
}

/// [`granted_scopes`] for Exchange Online's mail scopes (`items`: without the OIDC ones).
fn granted_mail_scopes(
    hosts: &[String],
    requested: &str,
    items: &[&str],
) -> Result<Vec<String>, EntraError> {
    let mut granted: Vec<String> = Vec::new();
    let mut default_scope = false;
    for item in items {
        let name = hosts
            .iter()
            .find_map(|host| item.strip_prefix(host.as_str()))
            .ok_or_else(|| aadsts::invalid_scope(requested))?;
        if name == ".default" {
            default_scope = true;
            granted.extend(MAIL_SCOPES.iter().map(|s| format!("{OUTLOOK}{s}")));
            continue;
        }
        let canonical = MAIL_SCOPES
            .iter()
            .find(|known| known.eq_ignore_ascii_case(name))
            .ok_or_else(|| aadsts::invalid_scope(requested))?;
        let full = format!("{OUTLOOK}{canonical}");
        if !granted.contains(&full) {
            granted.push(full);
        }
    }
    if granted.is_empty() || (default_scope && items.len() > 1) {
        return Err(aadsts::invalid_scope(requested));
    }
    Ok(granted)
}
