//! The listener on `127.0.0.1` that the browser comes back to after a `--browser` sign-in
//! (RFC 8252 §7.3): it reads bounded request heads from a bounded number of connections,
//! answers each with a short page, and ends the wait with the authorization response.

use std::io;
use std::net::Ipv4Addr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::timeout;

use super::error::FlowError;
use super::redirect::{code_from_query, has_answer};
use crate::oauth::endpoint::AuthorizationRequest;

/// How long `--browser` waits for the redirect unless told otherwise.
pub const DEFAULT_BROWSER_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// Longest request head the loopback listener reads; a redirect with a code is ~2 KiB.
const MAX_REQUEST_HEAD: usize = 16 * 1024;
/// How long a browser connection may take to send its request (browsers open spare
/// connections that never send one).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long answering the browser may take.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections the loopback listener reads at once; more are closed at once.
const MAX_CONNECTIONS: usize = 16;

/// The listener on `127.0.0.1` that the browser is redirected to after a `--browser`
/// sign-in, as `http://localhost:PORT/` (RFC 8252 §7.3; Entra ignores the port of a
/// `localhost` redirect URI).
#[derive(Debug)]
pub struct Loopback {
    listener: TcpListener,
    pub(super) port: u16,
}

impl Loopback {
    /// Binds `127.0.0.1:port`; port 0 takes any free port.
    pub async fn bind(port: u16) -> Result<Self, FlowError> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port))
            .await
            .map_err(FlowError::Listener)?;
        let port = listener.local_addr().map_err(FlowError::Listener)?.port();
        Ok(Self { listener, port })
    }

    /// The redirect URI to send in the authorization request.
    pub fn redirect_uri(&self) -> String {
        format!("http://localhost:{}/", self.port)
    }

    /// Waits up to `limit` for the browser to bring back the answer to `request`, answers it
    /// with a short page, and returns the authorization code. Requests for other paths
    /// (`/favicon.ico`) get a 404 and do not end the wait; neither does a `GET /` without
    /// `code` or `error`.
    pub async fn wait(
        self,
        request: &AuthorizationRequest,
        limit: Duration,
    ) -> Result<String, FlowError> {
        let deadline = tokio::time::sleep(limit);
        tokio::pin!(deadline);
        let mut reading = JoinSet::new();
        loop {
            tokio::select! {
                () = &mut deadline => return Err(FlowError::TimedOut(limit)),
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) if reading.len() < MAX_CONNECTIONS => {
                        reading.spawn(read_target(stream));
                    }
                    Ok(_) => {}
                    Err(e) => tracing::debug!(error = %e, "loopback accept failed"),
                },
                Some(Ok((stream, target))) = reading.join_next() => {
                    match answer(request, target.as_deref()) {
                        Reply::Continue(status, text) => respond(stream, status, &text).await,
                        Reply::Done(result) => {
                            let (status, text) = match &result {
                                Ok(_) => (200, "Signed in; you can close this window and \
                                                return to the terminal.".to_owned()),
                                Err(e) => (400, format!("Sign-in failed: {e}")),
                            };
                            respond(stream, status, &text).await;
                            return result;
                        }
                    }
                }
            }
        }
    }
}

/// What to do with one request to the loopback listener.
enum Reply {
    /// Answer with this status and text, and keep waiting.
    Continue(u16, String),
    /// Answer, and the wait is over.
    Done(Result<String, FlowError>),
}

fn answer(request: &AuthorizationRequest, target: Option<&str>) -> Reply {
    let Some(target) = target else {
        return Reply::Continue(400, "Bad request.".into());
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if path != "/" {
        return Reply::Continue(404, "Not found.".into());
    }
    if !has_answer(query) {
        return Reply::Continue(
            400,
            "This address only receives the answer of the Microsoft sign-in.".into(),
        );
    }
    Reply::Done(code_from_query(request, query))
}

/// Reads one request head and returns its target, when it is a `GET`.
async fn read_target(mut stream: TcpStream) -> (TcpStream, Option<String>) {
    let mut head = Vec::new();
    let read = timeout(REQUEST_TIMEOUT, async {
        let mut chunk = [0u8; 2048];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST_HEAD {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&chunk[..n]);
        }
        io::Result::Ok(())
    })
    .await;
    if !matches!(read, Ok(Ok(()))) {
        return (stream, None);
    }
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.trim_end().split(' ');
    let target = match (parts.next(), parts.next(), parts.next()) {
        (Some("GET"), Some(target), Some(version)) if version.starts_with("HTTP/1.") => {
            Some(target.to_owned())
        }
        _ => None,
    };
    (stream, target)
}

/// Answers the browser with a small HTML page saying `text`; failures are ignored (the
/// browser may be gone).
async fn respond(mut stream: TcpStream, status: u16, text: &str) {
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        _ => "Bad Request",
    };
    let body = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>m365-relay</title></head>\
         <body><p>{}</p></body></html>\n",
        html_escape(text)
    );
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/html; charset=utf-8\r\n\
         Content-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = timeout(RESPONSE_TIMEOUT, async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
}

fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}
