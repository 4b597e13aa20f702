//! The fake Entra's data and grant logic: registered apps, refresh-token rotation chains, issued
//! access tokens, the scope check, and the token minting. `fake_entra` wraps it in an HTTP endpoint.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::time::Duration;

use super::entra_errors::{self as aadsts, EntraError};
use super::fake_entra::{AccessTokenInfo, DEFAULT_EXPIRES_IN, TokenRequest};

/// A registered application; `secret: None` is a public client.
pub(super) struct App {
    pub(super) secret: Option<String>,
}

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
    pub(super) expires_in: u64,
    pub(super) requests: Vec<TokenRequest>,
    pub(super) unmatched: Vec<String>,
    pub(super) in_flight: usize,
    pub(super) max_in_flight: usize,
}

pub(super) const OUTLOOK: &str = "https://outlook.office.com/";
const OUTLOOK_365: &str = "https://outlook.office365.com/";
const MAIL_SCOPES: [&str; 3] = ["SMTP.Send", "IMAP.AccessAsUser.All", "POP.AccessAsUser.All"];
const OIDC_SCOPES: [&str; 4] = ["offline_access", "openid", "profile", "email"];

/// A successful token response, fields in the order Entra sends them.
#[derive(serde::Serialize)]
struct TokenSuccess<'a> {
    token_type: &'a str,
    scope: String,
    expires_in: u64,
    ext_expires_in: u64,
    access_token: String,
    refresh_token: String,
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
            expires_in: DEFAULT_EXPIRES_IN,
            requests: Vec::new(),
            unmatched: Vec::new(),
            in_flight: 0,
            max_in_flight: 0,
        }
    }

    /// Answers one token request and records it. `form` is None when the body was not a form.
    pub(super) fn answer(
        &mut self,
        tenant: &str,
        form: Option<BTreeMap<String, String>>,
    ) -> (u16, String) {
        let form_given = form.is_some();
        let form = form.unwrap_or_default();
        let mut stale = false;
        let (status, body) = if let Some(queued) = self.queued.pop_front() {
            queued
        } else if !form_given {
            self.error_body(aadsts::missing_parameter("grant_type"))
        } else {
            match self.grant(tenant, &form, &mut stale) {
                Ok(body) => (200, body),
                Err(err) => self.error_body(err),
            }
        };
        self.requests.push(TokenRequest {
            tenant: tenant.to_string(),
            form,
            status,
            stale_refresh_token: stale,
        });
        (status, body)
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
        match (
            &app.secret,
            param("client_secret"),
            param("client_assertion"),
        ) {
            (None, None, None) => {}
            (None, _, _) => return Err(aadsts::public_client_with_secret()),
            (Some(_), None, None) => return Err(aadsts::missing_client_secret()),
            (Some(expected), Some(given), _) if given == expected => {}
            (Some(_), _, _) => return Err(aadsts::invalid_client_secret(client_id)),
        }
        if grant_type != "refresh_token" {
            return Err(aadsts::unsupported_grant_type(grant_type));
        }
        let scope = param("scope").ok_or_else(|| aadsts::missing_parameter("scope"))?;
        let granted = granted_scopes(scope)?;
        let presented =
            param("refresh_token").ok_or_else(|| aadsts::missing_parameter("refresh_token"))?;

        let (upn, family, generation) = match self.refresh_tokens.get(presented) {
            Some(rt) if rt.tenant == tenant && rt.client_id == client_id => match rt.status {
                RtStatus::Valid => (rt.upn.clone(), rt.family, rt.generation),
                RtStatus::Expired => return Err(aadsts::refresh_token_inactive()),
                RtStatus::Revoked => return Err(aadsts::invalid_refresh_token()),
            },
            _ => return Err(aadsts::invalid_refresh_token()),
        };
        let newest = self.latest.get(&family).map_or(generation, |(g, _)| *g);
        *stale = generation < newest;
        let access_token = self.mint_access_token(tenant, client_id, &upn, granted.clone());
        let refresh_token = self.mint_refresh_token(tenant, client_id, &upn, family, newest + 1);
        let success = TokenSuccess {
            token_type: "Bearer",
            scope: granted.join(" "),
            expires_in: self.expires_in,
            ext_expires_in: self.expires_in,
            access_token,
            refresh_token,
        };
        Ok(serde_json::to_string(&success).expect("serialize token response"))
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
        let short: Vec<_> = scopes
            .iter()
            .map(|s| s.trim_start_matches(OUTLOOK))
            .collect();
        let payload = serde_json::json!({
            "aud": "https://outlook.office.com",
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
            scopes,
            expired: false,
            revoked: false,
        };
        self.access_tokens.insert(token.clone(), info);
        token
    }
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

/// Checks a requested `scope` and returns the granted mail scopes as Entra reports them:
/// `https://outlook.office.com/`-prefixed, without `offline_access` and the OpenID scopes.
fn granted_scopes(requested: &str) -> Result<Vec<String>, EntraError> {
    let mut granted: Vec<String> = Vec::new();
    let mut default_scope = false;
    for item in requested.split_whitespace() {
        if OIDC_SCOPES.contains(&item) {
            continue;
        }
        let name = item
            .strip_prefix(OUTLOOK)
            .or_else(|| item.strip_prefix(OUTLOOK_365))
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
    let outlook_items = requested
        .split_whitespace()
        .filter(|s| !OIDC_SCOPES.contains(s))
        .count();
    if granted.is_empty() || (default_scope && outlook_items > 1) {
        return Err(aadsts::invalid_scope(requested));
    }
    Ok(granted)
}
