//! POP3 login upstream, as Exchange Online expects it (PROTOCOL.md A2): implicit TLS,
//! greeting, then two steps: `AUTH XOAUTH2`, the server's `+`, the base64 line. A `+`
//! error challenge after it is answered with an empty line.

use zeroize::Zeroizing;

use super::connector::{CommandError, Connector, Login, Upstream, Wire, rejected};
use super::preconnect::Greeted;
use crate::config::ServerAddress;
use crate::error::Error;
use crate::protocol::sasl;
use crate::secret::AccessToken;

/// POP3 on implicit TLS: [`Connector::login`]`::<Pop3>` and its greeted variant.
#[derive(Debug, Clone, Copy)]
pub struct Pop3;

impl Login for Pop3 {
    fn greets_ready(greeting: &[u8]) -> bool {
        greeting.starts_with(b"+OK")
    }

    async fn login(greeted: Greeted, user: &str, token: &AccessToken) -> Result<Upstream, Error> {
        let server = greeted.server.clone();
        let connected_in = greeted.connected_in;
        let mut wire = Wire::greeted(&server, greeted);
        wire.send("AUTH XOAUTH2\r\n").await?;
        let go_ahead = wire.read_line().await?;
        if !go_ahead.starts_with(b"+") || go_ahead.starts_with(b"+OK") {
            return Err(wire.broke(&format!(
                "answered AUTH XOAUTH2 with `{}`",
                String::from_utf8_lossy(&go_ahead)
            )));
        }
        let response = Zeroizing::new(format!("{}\r\n", sasl::xoauth2(user, token).as_str()));
        wire.send(&response).await?;
        let mut verdict = wire.read_line().await?;
        if verdict.starts_with(b"+ ") || verdict == b"+" {
            // An error challenge: answer it empty and read the final verdict.
            wire.send("\r\n").await?;
            verdict = wire.read_line().await?;
        }
        let Some(ok) = verdict.strip_prefix(b"+OK") else {
            return Err(rejected(&server, user, &verdict));
        };
        let ok = String::from_utf8_lossy(ok).trim().to_owned();
        Ok(wire.logged_in(ok, connected_in))
    }
}

/// What `STAT` reports of a maildrop (RFC 1939 §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Maildrop {
    pub messages: u32,
    /// Their total size in octets.
    pub octets: u64,
}

impl Connector {
    /// On a connection that [`login`](Self::login)`::<Pop3>` logged in: `STAT`, then `QUIT`. A `-ERR`
    /// answer to STAT is [`CommandError::Refused`].
    pub async fn pop3_stat(
        &self,
        server: &ServerAddress,
        upstream: Upstream,
    ) -> Result<Maildrop, CommandError> {
        self.within(server, "asking STAT", async {
            let mut wire = Wire::resume(server, upstream);
            wire.send("STAT\r\n").await?;
            let line = wire.read_line().await?;
            if !line.starts_with(b"+OK") {
                return Err(wire.refused("STAT", &line));
            }
            let maildrop = parse_stat(&line).ok_or_else(|| {
                wire.broke(&format!(
                    "answered STAT with `{}`",
                    String::from_utf8_lossy(&line)
                ))
            })?;
            // QUIT is a courtesy: nothing was marked deleted, so its answer changes nothing.
            if wire.send("QUIT\r\n").await.is_ok() {
                let _ = wire.read_line().await;
            }
            wire.close().await;
            Ok(maildrop)
        })
        .await
    }
}

/// `+OK 2 320` → 2 messages, 320 octets.
fn parse_stat(line: &[u8]) -> Option<Maildrop> {
    let text = std::str::from_utf8(line.strip_prefix(b"+OK ")?).ok()?;
    let mut words = text.split_ascii_whitespace();
    Some(Maildrop {
        messages: words.next()?.parse().ok()?,
        octets: words.next()?.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_replies() {
        let drop = |messages, octets| Some(Maildrop { messages, octets });
        assert_eq!(parse_stat(b"+OK 2 320"), drop(2, 320));
        assert_eq!(parse_stat(b"+OK 0 0"), drop(0, 0));
        assert_eq!(parse_stat(b"+OK 5 1200 extra words"), drop(5, 1200));
        assert_eq!(parse_stat(b"+OK"), None);
        assert_eq!(parse_stat(b"+OK two 320"), None);
        assert_eq!(parse_stat(b"-ERR 2 320"), None);
    }
}
