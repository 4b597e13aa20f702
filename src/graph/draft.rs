//! The draft path, for messages that one `sendMail` request cannot carry
//! ([`MAX_REQUEST_BYTES`](super::MAX_REQUEST_BYTES)), or whose recipients must be set
//! explicitly while they are saved to Sent Items:
//!
//! 1. `POST /users/{m}/messages` with the JSON message without attachments: `201` with
//!    the draft's `id`;
//! 2. per attachment under [`SMALL_ATTACHMENT_BYTES`]: `POST .../messages/{id}/attachments`
//!    with a `fileAttachment` (`201`); per larger one: `POST .../attachments/createUploadSession`
//!    (`201` with an `uploadUrl`), then the bytes `PUT` to that URL in [`upload_ranges`]
//!    with `Content-Range`, **without** `Authorization` (the URL carries its own token, and
//!    Microsoft's upload endpoint refuses requests that send one): `200` per chunk, `201`
//!    after the last;
//! 3. `POST .../messages/{id}/send`: `202`.
//!
//! If a step fails after the draft exists, the draft is deleted (best effort) and the
//! step's error returned. A draft sent with `/send` is always saved to Sent Items: Graph
//! has no `saveToSentItems` switch there.

use http::Method;
use http::header::CONTENT_RANGE;
use serde::Deserialize;
use url::Url;

use super::error::{GraphError, INVALID_RESPONSE, MESSAGE_TOO_LARGE};
use super::json::{Attachment, GraphMessage};
use super::{Call, Graph, JSON};
use crate::secret::AccessToken;

/// Attachments below this many bytes are posted whole (their base64 stays under the
/// request limit); larger ones go through an upload session.
pub(crate) const SMALL_ATTACHMENT_BYTES: usize = 3_000_000;

/// The largest attachment an upload session takes (150 MB).
pub(crate) const MAX_ATTACHMENT_BYTES: usize = 150 * 1024 * 1024;

/// One upload chunk: a multiple of 320 KiB, at most 4 MB.
pub(crate) const UPLOAD_CHUNK: usize = 10 * 320 * 1024;

#[derive(Deserialize)]
struct Created {
    id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UploadSession {
    upload_url: String,
}

/// The byte ranges (first, last; inclusive) to upload `total` bytes in: each
/// [`UPLOAD_CHUNK`] long but the last.
pub(crate) fn upload_ranges(total: usize) -> Vec<(usize, usize)> {
    (0..total)
        .step_by(UPLOAD_CHUNK)
        .map(|start| (start, (start + UPLOAD_CHUNK).min(total) - 1))
        .collect()
}

/// Sends `message` through a draft of `mailbox`.
pub(super) async fn send(
    graph: &Graph,
    token: &AccessToken,
    mailbox: &str,
    message: &GraphMessage<'_>,
) -> Result<Option<String>, GraphError> {
    if let Some(big) = message
        .attachments
        .iter()
        .find(|a| a.bytes.len() > MAX_ATTACHMENT_BYTES)
    {
        return Err(GraphError::local(
            MESSAGE_TOO_LARGE,
            format!(
                "an attachment of {} bytes is above Graph's limit of {MAX_ATTACHMENT_BYTES}",
                big.bytes.len()
            ),
        ));
    }
    let body = serde_json::Value::Object(message.message.clone()).to_string();
    let url = graph.url(mailbox, &["messages"])?;
    let created = graph
        .call(&Call::new("create draft", url, token, JSON, body, &[201]))
        .await?;
    let id = serde_json::from_slice::<Created>(&created)
        .map_err(|_| GraphError::local(INVALID_RESPONSE, "created draft without an id"))?
        .id;

    let draft = Draft {
        graph,
        token,
        mailbox,
        id: &id,
    };
    let result = draft.complete(message).await;
    if result.is_err() {
        draft.delete().await;
    }
    result
}

/// A draft that exists in `mailbox`, and what it takes to talk to Graph about it.
struct Draft<'a> {
    graph: &'a Graph,
    token: &'a AccessToken,
    mailbox: &'a str,
    id: &'a str,
}

impl Draft<'_> {
    /// The URL of `path` under the draft: `.../messages/{id}/{path...}`.
    fn url(&self, path: &[&str]) -> Result<Url, GraphError> {
        let path: Vec<&str> = ["messages", self.id].iter().chain(path).copied().collect();
        self.graph.url(self.mailbox, &path)
    }

    /// Attaches the attachments to the draft and sends it.
    async fn complete(&self, message: &GraphMessage<'_>) -> Result<Option<String>, GraphError> {
        for attachment in &message.attachments {
            if attachment.bytes.len() < SMALL_ATTACHMENT_BYTES {
                let url = self.url(&["attachments"])?;
                let body = attachment.file_attachment().to_string();
                let call = Call::new("add attachment", url, self.token, JSON, body, &[201]);
                self.graph.call(&call).await?;
            } else {
                self.upload(attachment).await?;
            }
        }
        let url = self.url(&["send"])?;
        let call = Call::new("send draft", url, self.token, JSON, "", &[202]);
        self.graph.answer(&call).await.map(|(_, id)| id)
    }

    /// Uploads one large attachment through an upload session.
    async fn upload(&self, attachment: &Attachment<'_>) -> Result<(), GraphError> {
        let url = self.url(&["attachments", "createUploadSession"])?;
        let body = attachment.upload_item().to_string();
        let call = Call::new("create upload session", url, self.token, JSON, body, &[201]);
        let session = self.graph.call(&call).await?;
        let invalid = || GraphError::local(INVALID_RESPONSE, "unusable upload session");
        let upload_url = serde_json::from_slice::<UploadSession>(&session)
            .map_err(|_| invalid())?
            .upload_url;
        let upload_url = Url::parse(&upload_url).map_err(|_| invalid())?;
        // Only to Graph's own scheme: never from https down to plain http.
        let scheme_ok = upload_url.scheme() == "https"
            || (upload_url.scheme() == "http" && self.graph.base.scheme() == "http");
        if !scheme_ok {
            return Err(invalid());
        }

        let total = attachment.bytes.len();
        let ranges = upload_ranges(total);
        for (i, &(first, last)) in ranges.iter().enumerate() {
            let expect: &'static [u16] = if i + 1 == ranges.len() {
                &[200, 201]
            } else {
                &[200]
            };
            let call = Call {
                kind: "upload chunk",
                method: Method::PUT,
                url: upload_url.clone(),
                token: None,
                content_type: "application/octet-stream",
                body: bytes::Bytes::copy_from_slice(&attachment.bytes[first..=last]),
                extra: Some((CONTENT_RANGE, format!("bytes {first}-{last}/{total}"))),
                expect,
            };
            self.graph.call(&call).await?;
        }
        Ok(())
    }

    /// Deletes the draft, best effort: a failure is only logged.
    async fn delete(&self) {
        let Ok(url) = self.url(&[]) else {
            return;
        };
        let mut call = Call::new("delete draft", url, self.token, JSON, "", &[204]);
        call.method = Method::DELETE;
        if let Err(e) = self.graph.call(&call).await {
            tracing::debug!(error = %e, "could not delete the unsent draft");
        }
    }
}
