//! IMAP login upstream, as Exchange Online expects it (PROTOCOL.md A2): implicit TLS,
//! greeting, `AUTHENTICATE XOAUTH2 <initial response>` (SASL-IR, one line). A `+` error
//! challenge is answered with an empty line. When the tagged OK carries no
//! `[CAPABILITY ...]` code, the relay asks for CAPABILITY so that the client can be told
//! the real server's capabilities in its own OK.

use zeroize::Zeroizing;

use super::connector::{CommandError, Connector, Login, MAX_REPLY_LINES, Upstream, Wire, rejected};
use super::preconnect::Greeted;
use crate::config::ServerAddress;
use crate::error::Error;
use crate::protocol::imap::capability_code;
use crate::protocol::sasl;
use crate::secret::AccessToken;

/// IMAP on implicit TLS: [`Connector::login`]`::<Imap>` and its greeted variant.
#[derive(Debug, Clone, Copy)]
pub struct Imap;

impl Login for Imap {
    fn greets_ready(greeting: &[u8]) -> bool {
        starts_with_ignore_case(greeting, b"* OK")
    }

    async fn login(greeted: Greeted, user: &str, token: &AccessToken) -> Result<Upstream, Error> {
        let server = greeted.server.clone();
        let connected_in = greeted.connected_in;
        let mut wire = Wire::greeted(&server, greeted);
        let auth = Zeroizing::new(format!(
            "R1 AUTHENTICATE XOAUTH2 {}\r\n",
            sasl::xoauth2(user, token).as_str()
        ));
        wire.send(&auth).await?;
        let ok = match tagged(&mut wire, b"R1 ", true).await? {
            Ok(text) => text,
            Err(line) => return Err(rejected(&server, user, &line)),
        };
        let ok = match capability_code(&ok) {
            Some(_) => ok,
            None => ask_capabilities(&mut wire, &ok).await?,
        };
        Ok(wire.logged_in(ok, connected_in))
    }
}

impl Connector {
    /// On a connection that [`login`](Self::login)`::<Imap>` logged in: `SELECT INBOX`, then `LOGOUT`.
    /// Returns how many messages INBOX holds (its `* n EXISTS`). A `NO`, `BAD` or `* BYE`
    /// answer to the SELECT (e.g. `User is authenticated but not connected`) is
    /// [`CommandError::Refused`].
    pub async fn imap_inbox_count(
        &self,
        server: &ServerAddress,
        upstream: Upstream,
    ) -> Result<u32, CommandError> {
        self.within(server, "selecting INBOX", async {
            let mut wire = Wire::resume(server, upstream);
            let count = select_inbox(&mut wire).await?;
            // LOGOUT is a courtesy: the count is known whatever it answers.
            if wire.send("R4 LOGOUT\r\n").await.is_ok() {
                for _ in 0..MAX_REPLY_LINES {
                    match wire.read_line().await {
                        Ok(line) if !line.starts_with(b"R4 ") => {}
                        _ => break,
                    }
                }
            }
            wire.close().await;
            Ok(count)
        })
        .await
    }
}

/// `R3 SELECT INBOX`: the `* n EXISTS` count once the tagged OK arrives.
async fn select_inbox(wire: &mut Wire<'_>) -> Result<u32, CommandError> {
    const SELECT: &str = "SELECT INBOX";
    wire.send("R3 SELECT INBOX\r\n").await?;
    let mut exists = 0;
    for _ in 0..MAX_REPLY_LINES {
        let line = wire.read_line().await?;
        if let Some(rest) = line.strip_prefix(b"R3 ") {
            if starts_with_ignore_case(rest, b"OK") {
                return Ok(exists);
            }
            return Err(wire.refused(SELECT, &line));
        }
        if starts_with_ignore_case(&line, b"* BYE") {
            return Err(wire.refused(SELECT, &line));
        }
        if let Some(n) = exists_count(&line) {
            exists = n;
        }
    }
    Err(wire.broke("too many lines in the SELECT reply").into())
}

/// `* 12 EXISTS` → 12.
fn exists_count(line: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(line.strip_prefix(b"* ")?).ok()?;
    let (n, what) = text.split_once(' ')?;
    what.trim_end()
        .eq_ignore_ascii_case("EXISTS")
        .then(|| n.parse().ok())
        .flatten()
}

/// Reads to the reply tagged `tag`: `Ok(text after "OK ")`, or `Err(the line)` for NO/BAD.
/// Untagged lines are skipped; a `+` continuation (an error challenge) is answered with an
/// empty line when `answer_challenges`.
async fn tagged(
    wire: &mut Wire<'_>,
    tag: &[u8],
    answer_challenges: bool,
) -> Result<Result<String, Vec<u8>>, Error> {
    for _ in 0..MAX_REPLY_LINES {
        let line = wire.read_line().await?;
        if let Some(rest) = line.strip_prefix(tag) {
            if starts_with_ignore_case(rest, b"OK") {
                let text = rest.get(3..).unwrap_or_default();
                return Ok(Ok(String::from_utf8_lossy(text).into_owned()));
            }
            return Ok(Err(line));
        }
        if line.starts_with(b"+") && answer_challenges {
            wire.send("\r\n").await?;
        } else if starts_with_ignore_case(&line, b"* BYE") {
            return Err(wire.broke(&format!("said `{}`", String::from_utf8_lossy(&line))));
        } else if !line.starts_with(b"* ") {
            return Err(wire.broke(&format!("unexpected `{}`", String::from_utf8_lossy(&line))));
        }
    }
    Err(wire.broke("too many lines before the tagged reply"))
}

/// `[CAPABILITY ...] ok` from a CAPABILITY command, or `ok` unchanged if the server
/// gives none.
async fn ask_capabilities(wire: &mut Wire<'_>, ok: &str) -> Result<String, Error> {
    wire.send("R2 CAPABILITY\r\n").await?;
    let mut capabilities = None;
    for _ in 0..MAX_REPLY_LINES {
        let line = wire.read_line().await?;
        if starts_with_ignore_case(&line, b"* CAPABILITY ") {
            capabilities = Some(String::from_utf8_lossy(&line[13..]).into_owned());
        } else if line.starts_with(b"R2 ") {
            return Ok(match capabilities {
                Some(caps) => format!("[CAPABILITY {caps}] {ok}"),
                None => ok.to_owned(),
            });
        }
    }
    Err(wire.broke("too many lines in the CAPABILITY reply"))
}

fn starts_with_ignore_case(line: &[u8], prefix: &[u8]) -> bool {
    line.get(..prefix.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exists_lines() {
        assert_eq!(exists_count(b"* 12 EXISTS"), Some(12));
        assert_eq!(exists_count(b"* 0 exists"), Some(0));
        assert_eq!(exists_count(b"* 3 RECENT"), None);
        assert_eq!(
            exists_count(b"* OK [UIDNEXT 4] The next unique identifier value"),
            None
        );
        assert_eq!(exists_count(b"R3 12 EXISTS"), None);
    }
}
