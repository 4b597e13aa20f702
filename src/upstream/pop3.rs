//! POP3 login upstream, as Exchange Online expects it (PROTOCOL.md A2): implicit TLS,
//! greeting, then two steps: `AUTH XOAUTH2`, the server's `+`, the base64 line. A `+`
//! error challenge after it is answered with an empty line.

use zeroize::Zeroizing;

use super::{Connector, Upstream, Wire, rejected};
use crate::config::ServerAddress;
use crate::error::Error;
use crate::protocol::sasl;
use crate::secret::AccessToken;

impl Connector {
    /// Connects to `server` (implicit TLS) and logs in as `user` with `token`.
    pub async fn pop3(
        &self,
        server: &ServerAddress,
        user: &str,
        token: &AccessToken,
    ) -> Result<Upstream, Error> {
        self.bounded(server, self.pop3_login(server, user, token))
            .await
    }

    async fn pop3_login(
        &self,
        server: &ServerAddress,
        user: &str,
        token: &AccessToken,
    ) -> Result<Upstream, Error> {
        let tcp = self.connect_tcp(server).await?;
        let mut wire = Wire::new(server, self.start_tls(server, tcp).await?);
        let greeting = wire.read_line().await?;
        if !greeting.starts_with(b"+OK") {
            return Err(wire.broke(&format!(
                "greeted with `{}`",
                String::from_utf8_lossy(&greeting)
            )));
        }
        wire.send("AUTH XOAUTH2\r\n").await?;
        let go_ahead = wire.read_line().await?;
        if !go_ahead.starts_with(b"+") || go_ahead.starts_with(b"+OK") {
            return Err(wire.broke(&format!(
                "answered AUTH XOAUTH2 with `{}`",
                String::from_utf8_lossy(&go_ahead)
            )));
        }
        let response = Zeroizing::new(format!("{}\r\n", sasl::xoauth2(user, token)));
        wire.send(&response).await?;
        let mut verdict = wire.read_line().await?;
        if verdict.starts_with(b"+ ") || verdict == b"+" {
            // An error challenge: answer it empty and read the final verdict.
            wire.send("\r\n").await?;
            verdict = wire.read_line().await?;
        }
        let Some(ok) = verdict.strip_prefix(b"+OK") else {
            return Err(rejected(server, user, &verdict));
        };
        let ok = String::from_utf8_lossy(ok).trim().to_owned();
        let (stream, residual) = wire.into_parts();
        Ok(Upstream {
            stream,
            residual,
            ok,
            capabilities: Vec::new(),
        })
    }
}
