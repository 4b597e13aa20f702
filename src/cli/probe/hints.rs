//! The probe's hints: for a known failure of a `mailbox test` step, one line that tells the
//! administrator what to do. This is the whole table: Entra's AADSTS codes (PROTOCOL.md A3),
//! Exchange Online's refusals of a login or a message (A3, A5, A10), Microsoft Graph's
//! refusals, and network and TLS trouble. The steps themselves are in `steps.rs`.

use super::failure::{Context, Failure, Step};
use crate::error::Error;
use crate::oauth::{IdpError, TokenError};
use crate::upstream::CommandError;

/// The one-line hint for a known failure of `step`, or `None`. This is the whole table:
/// Entra's AADSTS codes (PROTOCOL.md A3), Exchange Online's refusals of a login or a
/// message (A3, A5, A10), and network and TLS trouble.
pub fn hint(step: Step, failure: &Failure, cx: &Context<'_>) -> Option<String> {
    match failure {
        Failure::Token(e) => token_hint(e, cx),
        Failure::Login(e) | Failure::Command(CommandError::Failed(e)) => match e {
            Error::UpstreamUnreachable { server, .. } | Error::UpstreamTimeout { server, .. } => {
                Some(format!(
                    "the relay cannot reach {server}: allow outgoing connections to it in the \
                     firewall, or check the proxy in between (the relay needs a direct TCP \
                     connection) and the configured upstream"
                ))
            }
            Error::UpstreamTls { server, .. } => Some(format!(
                "TLS to {server} failed: if a proxy or firewall inspects TLS, put its CA \
                 certificate (PEM) in `upstream.ca_file`; check that the configured upstream \
                 host name is the server's"
            )),
            Error::UpstreamRejected { reply, .. } => reply_hint(step, reply, cx),
            Error::UpstreamProtocol { detail, .. } => reply_hint(step, detail, cx),
            _ => None,
        },
        Failure::Command(CommandError::Refused { reply, .. }) => reply_hint(step, reply, cx),
        Failure::Graph(e) => graph_hint(e, cx),
    }
}

/// Hints for Microsoft Graph's refusals of a message.
fn graph_hint(error: &crate::graph::GraphError, cx: &Context<'_>) -> Option<String> {
    match (error.status, error.code.as_str()) {
        (Some(403), "ErrorSendAsDenied") => Some(format!(
            "{} may not send as {}: give it Full Access and SendAs on the mailbox in Exchange, \
             and the app the Graph permission Mail.Send.Shared",
            cx.owner, cx.mailbox
        )),
        (Some(403), _) => Some(
            "the token lacks the Graph permission Mail.Send (delegated, or application for \
             app-only) or its admin consent; for app-only, an application access policy may \
             exclude the mailbox"
                .into(),
        ),
        (Some(401), _) => {
            Some("Graph refused the token: check the app registration's Graph permissions".into())
        }
        _ => None,
    }
}

/// Hints for failures of the token step. The app's credentials and consent concern every
/// mailbox; a user's sign-in only the delegated ones.
fn token_hint(error: &TokenError, cx: &Context<'_>) -> Option<String> {
    let owner = cx.owner;
    let authorize = format!("`m365-relay mailbox authorize {owner}`");
    let (error, codes) = match error {
        TokenError::Idp(IdpError::Rejected { error, codes, .. }) => (error.as_str(), codes),
        TokenError::Idp(IdpError::Unavailable { .. }) => {
            return Some(format!(
                "the relay cannot reach Entra at {}: allow outgoing HTTPS to it in the firewall \
                 or proxy; if a proxy inspects TLS, put its CA certificate in \
                 `upstream.ca_file`",
                cx.authority
            ));
        }
        TokenError::NotAuthorized => {
            return Some(format!(
                "no refresh token is stored for {owner}: sign it in with {authorize} (or store \
                 one with `m365-relay mailbox import-token {owner}`)"
            ));
        }
        TokenError::DelegateMissing(_) => {
            return Some(format!(
                "{} takes its token from a mailbox that is not registered with its own app \
                 registration: register that mailbox with `m365-relay mailbox add` and sign it \
                 in",
                cx.mailbox
            ));
        }
        TokenError::Idp(IdpError::Malformed(_))
        | TokenError::UnknownMailbox
        | TokenError::Store(_) => return None,
    };
    rejected_hint(error, codes, cx)
}

/// Entra's refusals (AADSTS codes): the app's credentials and consent first; for a user's
/// token, then its sign-in.
fn rejected_hint(error: &str, codes: &[u64], cx: &Context<'_>) -> Option<String> {
    let app = credential_hint(codes, cx.owner).or_else(|| consent_hint(error, codes, cx));
    if app.is_some() || cx.app_only {
        return app;
    }
    sign_in_hint(error, codes, cx.owner)
}

/// The app's secret or certificate.
fn credential_hint(codes: &[u64], owner: &str) -> Option<String> {
    let code = |c: u64| codes.contains(&c);
    if code(7_000_222) {
        Some(format!(
            "the app's client secret expired: create a new one (Entra admin center > App \
             registrations > the app > Certificates & secrets) and register it for {owner}"
        ))
    } else if code(7_000_215) {
        Some(format!(
            "the client secret registered for {owner} is wrong: register the secret's Value \
             (not its Secret ID)"
        ))
    } else if code(7_000_218) {
        Some(format!(
            "the app registration is a confidential client but no client secret is registered \
             for {owner}: register one, or turn on \"Allow public client flows\" for the app"
        ))
    } else if code(700_025) {
        Some(format!(
            "the app registration is a public client, which must not send a client secret: \
             register {owner} without one, or turn off \"Allow public client flows\""
        ))
    } else if code(700_027) {
        Some(format!(
            "Entra does not accept the certificate registered for {owner}: upload it to the \
             app registration (Certificates & secrets) and check that it has not expired"
        ))
    } else {
        None
    }
}

/// The app's permissions, their consent, and the app itself.
fn consent_hint(error: &str, codes: &[u64], cx: &Context<'_>) -> Option<String> {
    let owner = cx.owner;
    let authorize = format!("`m365-relay mailbox authorize {owner}`");
    let code = |c: u64| codes.contains(&c);
    let permissions = if cx.app_only {
        "the application permissions IMAP.AccessAsApp, POP.AccessAsApp and SMTP.SendAsApp of \
         Office 365 Exchange Online"
    } else {
        "the delegated permissions IMAP.AccessAsUser.All, POP.AccessAsUser.All and SMTP.Send"
    };
    if code(65_001) || error == "consent_required" {
        let then = if cx.app_only {
            String::new()
        } else {
            format!(", then {authorize}")
        };
        Some(format!(
            "{permissions} have not been consented to: grant admin consent (Entra admin center \
             > App registrations > the app > API permissions > Grant admin consent){then}"
        ))
    } else if error == "invalid_scope" {
        Some(format!(
            "Entra refused the scopes: the app needs {permissions} (https://outlook.office.com/ \
             or https://outlook.office365.com/), not Graph-prefixed ones"
        ))
    } else if error == "invalid_client" || error == "unauthorized_client" {
        Some(format!(
            "Entra refused the app: check the tenant, the client id and the secret or \
             certificate registered for {owner}"
        ))
    } else {
        None
    }
}

/// The user's sign-in (delegated tokens only).
fn sign_in_hint(error: &str, codes: &[u64], owner: &str) -> Option<String> {
    let authorize = format!("`m365-relay mailbox authorize {owner}`");
    let code = |c: u64| codes.contains(&c);
    if code(700_082) {
        Some(format!(
            "the refresh token expired after 90 days without use: sign in again with \
             {authorize} (a running relay refreshes daily, which keeps it alive)"
        ))
    } else if code(50_076) || code(50_079) {
        Some(format!(
            "the tenant requires multi-factor authentication: sign in interactively with \
             {authorize} and complete MFA"
        ))
    } else if code(70_043) || error == "interaction_required" {
        Some(format!(
            "a Conditional Access sign-in frequency policy ended the session: sign in again \
             with {authorize} (the policy decides how often this recurs)"
        ))
    } else if error == "invalid_grant" {
        Some(format!(
            "Entra no longer accepts the refresh token (revoked sessions, a password reset, or \
             it expired): sign in again with {authorize}"
        ))
    } else {
        None
    }
}

/// Hints keyed on what Exchange Online answered: a login refusal (SMTP `535`, IMAP `NO`,
/// POP3 `-ERR`) or the refusal of a command after it.
fn reply_hint(step: Step, reply: &str, cx: &Context<'_>) -> Option<String> {
    rights_hint(reply, cx).or_else(|| refused_login_hint(step, reply, cx))
}

/// Who needs rights on the mailbox: the delegate's user, or the app's service principal.
fn grantee<'a>(cx: &Context<'a>) -> &'a str {
    if cx.app_only {
        "<the service principal's object ID>"
    } else {
        cx.owner
    }
}

/// The PowerShell line that gives the grantee Full Access to the mailbox.
fn full_access(cx: &Context<'_>) -> String {
    let (mailbox, grantee) = (cx.mailbox, grantee(cx));
    format!("`Add-MailboxPermission -Identity {mailbox} -User {grantee} -AccessRights FullAccess`")
}

/// Whether `reply` holds the word `code` (an enhanced status code, e.g. `5.7.3`).
fn reply_has_code(reply: &str, code: &str) -> bool {
    reply.split_ascii_whitespace().any(|w| w == code)
}

/// Whether `reply` says `text`, in any case.
fn reply_says(reply: &str, text: &str) -> bool {
    reply
        .to_ascii_lowercase()
        .contains(&text.to_ascii_lowercase())
}

/// Refusals that name their cause: SMTP AUTH off, missing rights, throttling.
fn rights_hint(reply: &str, cx: &Context<'_>) -> Option<String> {
    let (mailbox, owner) = (cx.mailbox, cx.owner);
    let (grantee, full_access) = (grantee(cx), full_access(cx));
    let code = |c: &str| reply_has_code(reply, c);
    let says = |text: &str| reply_says(reply, text);
    if code("5.7.139") {
        return Some(format!(
            "SMTP AUTH is disabled for the tenant or the mailbox: in Exchange Online \
             PowerShell, `Set-CASMailbox -Identity {mailbox} -SmtpClientAuthenticationDisabled \
             $false`, or tenant-wide `Set-TransportConfig -SmtpClientAuthenticationDisabled \
             $false`"
        ));
    }
    if says("User is authenticated but not connected") {
        let who = if cx.app_only {
            "the app's service principal".to_owned()
        } else {
            owner.to_owned()
        };
        return Some(format!(
            "the login worked but the mailbox cannot be opened: {who} needs Full Access: \
             {full_access}"
        ));
    }
    if code("5.2.252") || says("SendAsDenied") || code("5.7.60") {
        return Some(format!(
            "{} may not send as {mailbox}: grant Send As with `Add-RecipientPermission \
             -Identity {mailbox} -Trustee {grantee} -AccessRights SendAs`",
            if cx.app_only { "the app" } else { owner }
        ));
    }
    if says("Request is throttled") {
        return Some(
            "Exchange Online is throttling this mailbox: wait the suggested back-off time and \
             try again"
                .to_owned(),
        );
    }
    None
}

/// A refused login with no named cause: the usual suspects, for a user's or an app's token.
fn refused_login_hint(step: Step, reply: &str, cx: &Context<'_>) -> Option<String> {
    let (mailbox, owner) = (cx.mailbox, cx.owner);
    let full_access = full_access(cx);
    let code = |c: &str| reply_has_code(reply, c);
    let says = |text: &str| reply_says(reply, text);
    let refused_login = match step {
        Step::Smtp => code("5.7.3") || reply.starts_with("535"),
        Step::Imap => says("AUTHENTICATE failed"),
        Step::Pop3 => says("Authentication failure"),
        Step::Token | Step::Graph | Step::Send => false,
    };
    if !refused_login {
        return None;
    }
    let switch = match step {
        Step::Imap => format!("`Set-CASMailbox -Identity {mailbox} -ImapEnabled $true`"),
        Step::Pop3 => format!("`Set-CASMailbox -Identity {mailbox} -PopEnabled $true`"),
        _ => {
            format!("`Set-CASMailbox -Identity {mailbox} -SmtpClientAuthenticationDisabled $false`")
        }
    };
    let disabled = format!("the protocol is disabled for the mailbox ({switch})");
    if cx.app_only {
        return Some(format!(
            "Microsoft refused the app-only token for {mailbox}. Causes: the app's service \
             principal is not registered in Exchange Online (`New-ServicePrincipal -AppId <app \
             id> -ObjectId <object ID of the Enterprise Application, not of the App \
             registration>`) or has no Full Access ({full_access}); {disabled}; or the app \
             lacks the application permission for it, with admin consent"
        ));
    }
    let shared = if mailbox == owner {
        String::new()
    } else {
        format!("; {owner} has no Full Access to the shared mailbox ({full_access})")
    };
    Some(format!(
        "Microsoft refused the token for {mailbox}. Causes: the token is for the wrong audience \
         (the app's permissions must be https://outlook.office.com/..., not Graph-prefixed \
         scopes); {disabled}{shared}; or, for app-only access, the service principal is not \
         registered in Exchange Online (`New-ServicePrincipal` with the Enterprise \
         Application's object ID, then `Add-MailboxPermission ... -AccessRights FullAccess`)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: &str = "alice@contoso.com";
    const HELP: &str = "helpdesk@contoso.com";

    fn cx(mailbox: &'static str) -> Context<'static> {
        Context {
            mailbox,
            owner: ALICE,
            app_only: false,
            authority: "https://login.microsoftonline.com",
        }
    }

    fn rejected(error: &str, code: u64) -> Failure {
        Failure::Token(TokenError::Idp(IdpError::Rejected {
            status: 400,
            error: error.to_owned(),
            description: format!("AADSTS{code}: refused"),
            codes: vec![code],
        }))
    }

    fn login_refused(reply: &str) -> Failure {
        Failure::Login(Error::UpstreamRejected {
            server: "outlook.office365.com:993".into(),
            mailbox: ALICE.into(),
            reply: reply.into(),
        })
    }

    fn hint_of(step: Step, failure: &Failure) -> String {
        hint(step, failure, &cx(ALICE)).unwrap_or_else(|| panic!("no hint for {failure}"))
    }

    #[test]
    fn aadsts_codes_have_hints() {
        for (error, code, expected) in [
            ("invalid_grant", 700_082, "90 days without use"),
            (
                "invalid_grant",
                700_082,
                "mailbox authorize alice@contoso.com",
            ),
            ("interaction_required", 70_043, "sign-in frequency"),
            ("interaction_required", 0, "sign-in frequency"),
            ("invalid_client", 7_000_222, "client secret expired"),
            ("invalid_client", 7_000_215, "secret's Value"),
            ("invalid_client", 7_000_218, "confidential client"),
            ("invalid_client", 700_025, "public client"),
            ("invalid_grant", 65_001, "admin consent"),
            ("consent_required", 0, "admin consent"),
            ("interaction_required", 50_076, "multi-factor"),
            ("interaction_required", 50_079, "multi-factor"),
            ("invalid_scope", 70_011, "not Graph-prefixed"),
            ("invalid_grant", 70_000, "revoked sessions"),
            ("unauthorized_client", 700_016, "client id"),
        ] {
            let hint = hint_of(Step::Token, &rejected(error, code));
            assert!(hint.contains(expected), "{error} {code}: {hint}");
        }
        assert_eq!(
            hint(Step::Token, &rejected("server_error", 1), &cx(ALICE)),
            None
        );
        let unreachable = Failure::Token(TokenError::Idp(IdpError::Unavailable {
            reason: "connection refused".into(),
            retry_after: None,
        }));
        let h = hint_of(Step::Token, &unreachable);
        assert!(h.contains("https://login.microsoftonline.com") && h.contains("upstream.ca_file"));
        let h = hint_of(Step::Token, &Failure::Token(TokenError::NotAuthorized));
        assert!(
            h.contains("`m365-relay mailbox authorize alice@contoso.com`"),
            "{h}"
        );
    }

    #[test]
    fn exchange_refusals_have_hints() {
        let disabled = "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is \
                        disabled for the Tenant. Visit https://aka.ms/smtp_auth_disabled for more \
                        information.";
        let h = hint_of(Step::Smtp, &login_refused(disabled));
        assert!(
            h.contains("Set-CASMailbox -Identity alice@contoso.com -SmtpClientAuthenticationDisabled $false")
                && h.contains("Set-TransportConfig -SmtpClientAuthenticationDisabled $false"),
            "{h}"
        );

        for (step, reply, switch) in [
            (
                Step::Smtp,
                "535 5.7.3 Authentication unsuccessful [X.prod.outlook.com]",
                "-SmtpClientAuthenticationDisabled $false",
            ),
            (
                Step::Imap,
                "R1 NO AUTHENTICATE failed.",
                "-ImapEnabled $true",
            ),
            (
                Step::Pop3,
                "-ERR Authentication failure: unknown user name or bad password.",
                "-PopEnabled $true",
            ),
        ] {
            let h = hint_of(step, &login_refused(reply));
            for part in [
                switch,
                "wrong audience",
                "New-ServicePrincipal",
                "Enterprise Application",
            ] {
                assert!(h.contains(part), "{reply}: {part}: {h}");
            }
            assert!(!h.contains("shared mailbox"), "{h}");
            let shared = hint(step, &login_refused(reply), &cx(HELP)).unwrap();
            assert!(
                shared.contains(
                    "Add-MailboxPermission -Identity helpdesk@contoso.com -User alice@contoso.com -AccessRights FullAccess"
                ),
                "{shared}"
            );
        }
        // 5.7.30 is not 5.7.3.
        let basic = "550 5.7.30 Basic authentication is not supported for Client Submission.";
        assert_eq!(hint(Step::Send, &login_refused(basic), &cx(ALICE)), None);

        let not_connected = Failure::Command(CommandError::Refused {
            server: "outlook.office365.com:993".into(),
            command: "SELECT INBOX",
            reply: "R3 NO User is authenticated but not connected.".into(),
        });
        assert!(hint_of(Step::Imap, &not_connected).contains("FullAccess"));

        let send_as = Failure::Command(CommandError::Refused {
            server: "smtp.office365.com:587".into(),
            command: "the message",
            reply: "554 5.2.252 SendAsDenied; alice@contoso.com not allowed to send as \
                    helpdesk@contoso.com"
                .into(),
        });
        let h = hint(Step::Send, &send_as, &cx(HELP)).unwrap();
        assert!(
            h.contains("Add-RecipientPermission -Identity helpdesk@contoso.com -Trustee alice@contoso.com -AccessRights SendAs"),
            "{h}"
        );
        assert_eq!(
            hint(Step::Imap, &login_refused("R1 BAD what"), &cx(ALICE)),
            None
        );
    }

    #[test]
    fn app_only_mailboxes_get_app_only_hints() {
        let app_only = Context {
            app_only: true,
            ..cx(ALICE)
        };
        let h = hint(
            Step::Imap,
            &login_refused("R1 NO AUTHENTICATE failed."),
            &app_only,
        )
        .unwrap();
        for part in [
            "New-ServicePrincipal",
            "not of the App registration",
            "-User <the service principal's object ID> -AccessRights FullAccess",
            "-ImapEnabled $true",
        ] {
            assert!(h.contains(part), "{part}: {h}");
        }
        assert!(!h.contains("wrong audience"), "{h}");
        // No user signs in: the sign-in hints do not apply, the app's do.
        for (error, code) in [("invalid_grant", 700_082), ("interaction_required", 50_076)] {
            assert_eq!(hint(Step::Token, &rejected(error, code), &app_only), None);
        }
        let h = hint(Step::Token, &rejected("invalid_client", 700_027), &app_only).unwrap();
        assert!(h.contains("certificate"), "{h}");
        let h = hint(Step::Token, &rejected("invalid_grant", 65_001), &app_only).unwrap();
        assert!(
            h.contains("IMAP.AccessAsApp") && !h.contains("authorize"),
            "{h}"
        );
    }

    #[test]
    fn network_and_tls_have_hints() {
        let unreachable = Failure::Login(Error::UpstreamUnreachable {
            server: "smtp.office365.com:587".into(),
            source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        });
        let h = hint_of(Step::Smtp, &unreachable);
        assert!(
            h.contains("firewall") && h.contains("smtp.office365.com:587"),
            "{h}"
        );
        let timeout = Failure::Command(CommandError::Failed(Error::UpstreamTimeout {
            server: "outlook.office365.com:995".into(),
            during: "asking STAT",
        }));
        assert!(hint_of(Step::Pop3, &timeout).contains("proxy"));
        let tls = Failure::Login(Error::UpstreamTls {
            server: "outlook.office365.com:993".into(),
            detail: "invalid peer certificate: UnknownIssuer".into(),
        });
        assert!(hint_of(Step::Imap, &tls).contains("`upstream.ca_file`"));
    }
}
