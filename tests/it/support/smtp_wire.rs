//! Wire-level pieces of the fake Exchange Online SMTP server: Exchange's reply texts and the
//! command parser. `smtp_session` uses them.

/// Largest message the fake keeps (far below the advertised SIZE, which is Exchange's 150 MB).
pub(super) const MAX_MESSAGE: usize = 32 * 1024 * 1024;

/// Exchange Online's reply texts.
pub(super) mod reply {
    pub const HOST: &str = "BN8PR04CA0000.outlook.office365.com";
    pub const GREETING: &str = "220 BN8PR04CA0000.outlook.office365.com Microsoft ESMTP MAIL Service ready at Sat, 21 Nov 2026 10:00:00 +0000";
    pub const READY_FOR_TLS: &str = "220 2.0.0 SMTP server ready";
    pub const AUTH_OK: &str = "235 2.7.0 Authentication successful";
    pub const AUTH_FAILED: &str = "535 5.7.3 Authentication unsuccessful [BN8PR04CA0000.namprd04.prod.outlook.com 2026-11-21T10:00:00.000Z 08DE28A1B2C3D4E5]";
    pub const AUTH_DISABLED: &str = "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant. Visit https://aka.ms/smtp_auth_disabled for more information. [BN8PR04CA0000.namprd04.prod.outlook.com 2026-11-21T10:00:00.000Z 08DE28A1B2C3D4E5]";
    pub const BASIC_DISABLED: &str = "535 5.7.139 Authentication unsuccessful, basic authentication is disabled. [BN8PR04CA0000.namprd04.prod.outlook.com 2026-11-21T10:00:00.000Z 08DE28A1B2C3D4E5]";
    pub const UNKNOWN_MECHANISM: &str = "504 5.7.4 Unrecognized authentication type";
    pub const AUTH_CANCELLED: &str = "501 5.7.0 Authentication cancelled";
    pub const ALREADY_AUTHENTICATED: &str = "503 5.5.1 Already authenticated";
    pub const NOT_AUTHENTICATED: &str = "530 5.7.57 Client not authenticated to send mail.";
    pub const SEND_HELLO_FIRST: &str = "503 5.5.2 Send hello first";
    pub const BAD_SEQUENCE: &str = "503 5.5.1 Bad sequence of commands";
    pub const NEED_MAIL: &str = "503 5.5.1 Need mail command";
    pub const NEED_RCPT: &str = "503 5.5.1 Need rcpt command";
    pub const SENDER_ALREADY: &str = "503 5.5.1 Sender already specified";
    pub const BAD_ARGUMENTS: &str = "501 5.5.4 Invalid arguments";
    pub const BAD_DOMAIN: &str = "501 5.5.4 Invalid domain name";
    pub const SENDER_OK: &str = "250 2.1.0 Sender OK";
    pub const RECIPIENT_OK: &str = "250 2.1.5 Recipient OK";
    pub const START_MAIL: &str = "354 Start mail input; end with <CRLF>.<CRLF>";
    pub const TOO_BIG: &str = "552 5.3.4 Message size exceeds fixed maximum message size";
    pub const CHUNK_OK: &str = "250 2.0.0 BDAT chunk received";
    pub const RESETTING: &str = "250 2.0.0 Resetting";
    pub const OK: &str = "250 2.0.0 OK";
    pub const CLOSING: &str = "221 2.0.0 Service closing transmission channel";
    pub const UNRECOGNIZED: &str = "500 5.3.3 Unrecognized command";
    /// `{"status":"401","schemes":"bearer","scope":"https://outlook.office.com/SMTP.Send"}` goes after `334 `.
    pub const CHALLENGE_JSON: &str =
        r#"{"status":"401","schemes":"bearer","scope":"https://outlook.office.com/SMTP.Send"}"#;
}

pub(super) enum Command {
    Ehlo {
        extended: bool,
        domain: String,
    },
    StartTls,
    Auth {
        mechanism: String,
        initial: Option<String>,
    },
    Mail(String),
    Rcpt(String),
    Data,
    Bdat(String),
    Rset,
    Noop,
    Quit,
    Unknown,
}

impl Command {
    pub(super) fn parse(line: &str) -> Command {
        let (verb, args) = line.split_once(' ').unwrap_or((line, ""));
        match verb.to_ascii_uppercase().as_str() {
            "EHLO" | "HELO" => Command::Ehlo {
                extended: verb.eq_ignore_ascii_case("EHLO"),
                domain: args.trim().to_string(),
            },
            "STARTTLS" => Command::StartTls,
            "AUTH" => {
                let mut parts = args.split(' ');
                let mechanism = parts.next().unwrap_or("").to_ascii_uppercase();
                let initial = parts.next().map(str::to_string);
                Command::Auth { mechanism, initial }
            }
            "MAIL" => Command::Mail(args.to_string()),
            "RCPT" => Command::Rcpt(args.to_string()),
            "DATA" => Command::Data,
            "BDAT" => Command::Bdat(args.to_string()),
            "RSET" => Command::Rset,
            "NOOP" => Command::Noop,
            "QUIT" => Command::Quit,
            _ => Command::Unknown,
        }
    }
}

/// `FROM:<path> params` → `path` (keyword case-insensitive, optional space after the colon).
pub(super) fn parse_path(args: &str, keyword: &str) -> Option<String> {
    let head = args.get(..keyword.len())?;
    if !head.eq_ignore_ascii_case(keyword) {
        return None;
    }
    let rest = args[keyword.len()..].trim_start().strip_prefix('<')?;
    let end = rest.find('>')?;
    Some(rest[..end].to_string())
}
