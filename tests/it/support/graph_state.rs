//! The fake Graph's data and request logic: mailboxes and their delegates, the token
//! checks, `sendMail` (MIME and JSON), drafts, attachments, upload sessions with their
//! range rules, and the record of sent messages. `fake_graph` wraps it in HTTP; `graph_wire`
//! holds the records and the request parsing.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use axum::http::{HeaderMap, Method, Uri, header};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use super::fake_entra::AccessTokenChecker;

/// Graph's request-size limit (PROTOCOL.md A11).
const MAX_BODY: usize = 4 * 1024 * 1024;
/// Upload chunks: at most 4 MB, a multiple of 320 KiB except the last.
const MAX_CHUNK: usize = 4 * 1024 * 1024;
const CHUNK_UNIT: usize = 320 * 1024;
/// Attachments below this go by plain POST; upload sessions refuse them.
const MIN_UPLOAD: u64 = 3_000_000;

use super::graph_wire::{
    Answer, GraphRequest, Result, SentAttachment, SentContent, SentMail, decode_mime,
    file_attachment, json_message, list, parse_json, parse_mime, parse_range, percent_decode,
    scripted_message,
};

struct Mailbox {
    delegates: Vec<String>,
}

/// A draft: its content so far.
pub(super) struct Draft {
    mailbox: String,
    content: SentContent,
}

struct Session {
    draft: String,
    token: String,
    attachment: SentAttachment,
    size: usize,
}

pub(super) struct GraphState {
    base: String,
    checker: AccessTokenChecker,
    counter: u64,
    mailboxes: HashMap<String, Mailbox>,
    pub(super) drafts: HashMap<String, Draft>,
    sessions: HashMap<String, Session>,
    pub(super) sent: Vec<SentMail>,
    pub(super) deleted: Vec<String>,
    pub(super) script: VecDeque<(u16, String, Option<u64>)>,
    pub(super) delay: Duration,
    pub(super) requests: Vec<GraphRequest>,
}

impl GraphState {
    pub(super) fn new(base: String, checker: AccessTokenChecker) -> Self {
        Self {
            base,
            checker,
            counter: 0,
            mailboxes: HashMap::new(),
            drafts: HashMap::new(),
            sessions: HashMap::new(),
            sent: Vec::new(),
            deleted: Vec::new(),
            script: VecDeque::new(),
            delay: Duration::ZERO,
            requests: Vec::new(),
        }
    }

    pub(super) fn add_mailbox(&mut self, address: &str, delegates: &[&str]) {
        let delegates = delegates.iter().map(|d| d.to_ascii_lowercase()).collect();
        self.mailboxes
            .insert(address.to_ascii_lowercase(), Mailbox { delegates });
    }

    fn next_id(&mut self, prefix: &str) -> String {
        self.counter += 1;
        let noise = STANDARD.encode(format!("{}-{}", self.counter, "m".repeat(40)));
        format!("{prefix}{}", noise.replace(['+', '/'], "_"))
    }

    /// Answers and logs one request.
    pub(super) fn answer(
        &mut self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Answer {
        let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
        let answer = self.route(method, uri, headers, body).unwrap_or_else(|e| e);
        let code = (answer.status >= 400)
            .then(|| serde_json::from_str::<Value>(&answer.body).ok())
            .flatten()
            .and_then(|v| v["error"]["code"].as_str().map(str::to_owned));
        self.requests.push(GraphRequest {
            method: method.to_string(),
            path: uri.path().to_string(),
            status: answer.status,
            code,
            authorization: headers.contains_key(header::AUTHORIZATION),
            content_type: header(header::CONTENT_TYPE).map(str::to_owned),
            content_range: header(header::CONTENT_RANGE).map(str::to_owned),
            bytes: body.len(),
        });
        answer
    }

    fn route(
        &mut self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Answer> {
        let segments: Vec<String> = uri
            .path()
            .trim_matches('/')
            .split('/')
            .map(percent_decode)
            .collect();
        let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
        if let ["upload", session] = segments[..] {
            if method != Method::PUT {
                return Err(Answer::error(405, "MethodNotAllowed", "Use PUT."));
            }
            return self.upload(session, uri.query().unwrap_or_default(), headers, body);
        }
        let ["v1.0", "users", mailbox, ref rest @ ..] = segments[..] else {
            return Err(Answer::error(404, "UnknownPath", "No such endpoint."));
        };
        if let Some((status, code, retry_after)) = self.script.pop_front() {
            let mut answer = Answer::error(status, &code, &scripted_message(status));
            answer.retry_after = retry_after;
            return Err(answer);
        }
        if body.len() > MAX_BODY {
            return Err(Answer::error(
                413,
                "RequestEntityTooLarge",
                "The request body exceeds the maximum of 4 MB.",
            ));
        }
        self.authorize(headers, mailbox)?;
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_ascii_lowercase();
        match (method.as_str(), rest) {
            ("POST", ["sendMail"]) => self.send_mail(mailbox, &content_type, body),
            ("POST", ["messages"]) => self.create_draft(mailbox, &content_type, body),
            ("POST", ["messages", id, "attachments"]) => self.add_attachment(mailbox, id, body),
            ("POST", ["messages", id, "attachments", "createUploadSession"]) => {
                self.create_session(mailbox, id, body)
            }
            ("POST", ["messages", id, "send"]) => self.send_draft(mailbox, id),
            ("DELETE", ["messages", id]) => {
                self.draft(mailbox, id)?;
                self.drafts.remove(*id);
                self.deleted.push(id.to_string());
                Ok(Answer::empty(204))
            }
            _ => Err(Answer::error(404, "UnknownPath", "No such endpoint.")),
        }
    }

    /// The bearer token's audience, validity and permissions for `mailbox`.
    fn authorize(&self, headers: &HeaderMap, mailbox: &str) -> Result<()> {
        let invalid = |message: &str| Answer::error(401, "InvalidAuthenticationToken", message);
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| invalid("Access token is empty."))?;
        let info = self
            .checker
            .info(token)
            .ok_or_else(|| invalid("IDX14100: JWT is not well formed."))?;
        if !info.is_for_graph() {
            return Err(invalid(
                "Access token validation failure. Invalid audience.",
            ));
        }
        if !info.is_valid() {
            return Err(invalid("Lifetime validation failed, the token is expired."));
        }
        let target = mailbox.to_ascii_lowercase();
        let Some(mbx) = self.mailboxes.get(&target) else {
            return Err(Answer::error(
                404,
                "ErrorInvalidUser",
                &format!("The requested user '{mailbox}' is invalid."),
            ));
        };
        let denied = || {
            Answer::error(
                403,
                "ErrorAccessDenied",
                "Access is denied. Check credentials and try again.",
            )
        };
        if !info.has_graph_permission("Mail.Send") {
            return Err(denied());
        }
        let app_only = info.upn.starts_with("app:");
        let user = info.upn.to_ascii_lowercase();
        if !app_only && user != target {
            let shared =
                info.has_graph_permission("Mail.Send.Shared") && mbx.delegates.contains(&user);
            if !shared {
                return Err(Answer::error(
                    403,
                    "ErrorSendAsDenied",
                    "The user account which was used to submit this request does not have the right to send mail on behalf of the specified sending account.",
                ));
            }
        }
        Ok(())
    }

    fn send_mail(&mut self, mailbox: &str, content_type: &str, body: &[u8]) -> Result<Answer> {
        let (content, save, via) = if content_type.starts_with("text/plain") {
            (SentContent::Mime(decode_mime(body)?), true, "sendMail-mime")
        } else if content_type.starts_with("application/json") {
            let request = parse_json(body)?;
            let save = request["saveToSentItems"].as_bool().unwrap_or(true);
            (
                SentContent::Json(json_message(&request["message"])?),
                save,
                "sendMail-json",
            )
        } else {
            return Err(Answer::error(
                415,
                "UnsupportedMediaType",
                "Unsupported content type.",
            ));
        };
        self.record(mailbox, content, via, save)?;
        Ok(Answer::empty(202))
    }

    fn create_draft(&mut self, mailbox: &str, content_type: &str, body: &[u8]) -> Result<Answer> {
        let content = if content_type.starts_with("text/plain") {
            SentContent::Mime(decode_mime(body)?)
        } else {
            SentContent::Json(json_message(&parse_json(body)?)?)
        };
        let id = self.next_id("AAMkAD");
        let subject = match &content {
            SentContent::Json(j) => j.subject.clone(),
            SentContent::Mime(m) => parse_mime(m)?.subject().unwrap_or_default().to_string(),
        };
        self.drafts.insert(
            id.clone(),
            Draft {
                mailbox: mailbox.to_ascii_lowercase(),
                content,
            },
        );
        Ok(Answer::ok(
            201,
            json!({
                "@odata.context": format!("{}/v1.0/$metadata#users('{mailbox}')/messages/$entity", self.base),
                "id": id,
                "isDraft": true,
                "subject": subject,
            }),
        ))
    }

    fn draft(&mut self, mailbox: &str, id: &str) -> Result<&mut Draft> {
        match self.drafts.get_mut(id) {
            Some(d) if d.mailbox == mailbox.to_ascii_lowercase() => Ok(d),
            _ => Err(Answer::error(
                404,
                "ErrorItemNotFound",
                "The specified object was not found in the store.",
            )),
        }
    }

    fn add_attachment(&mut self, mailbox: &str, id: &str, body: &[u8]) -> Result<Answer> {
        let attachment = file_attachment(&parse_json(body)?)?;
        let size = attachment.bytes.len();
        let (name, is_inline) = (attachment.name.clone(), attachment.is_inline);
        match &mut self.draft(mailbox, id)?.content {
            SentContent::Json(j) => j.attachments.push(attachment),
            SentContent::Mime(_) => {
                return Err(Answer::error(
                    400,
                    "ErrorInvalidRequest",
                    "MIME drafts take no attachments here.",
                ));
            }
        }
        let attachment_id = self.next_id("AAMkADAtt");
        Ok(Answer::ok(
            201,
            json!({
                "@odata.type": "#microsoft.graph.fileAttachment",
                "id": attachment_id, "name": name, "size": size, "isInline": is_inline,
            }),
        ))
    }

    fn create_session(&mut self, mailbox: &str, id: &str, body: &[u8]) -> Result<Answer> {
        self.draft(mailbox, id)?;
        let request = parse_json(body)?;
        let item = &request["AttachmentItem"];
        let bad = |m: &str| Answer::error(400, "ErrorInvalidRequest", m);
        if item["attachmentType"] != "file" {
            return Err(bad("attachmentType must be file."));
        }
        let name = item["name"]
            .as_str()
            .filter(|n| !n.is_empty())
            .ok_or_else(|| bad("name is required."))?;
        let size = item["size"]
            .as_u64()
            .ok_or_else(|| bad("size is required."))?;
        if size < MIN_UPLOAD {
            return Err(Answer::error(
                400,
                "ErrorAttachmentSizeShouldNotBeLessThanMinimumSize",
                "Attachment size must be greater than the minimum size.",
            ));
        }
        let session = self.next_id("sess");
        let token = self.next_id("tok");
        let attachment = SentAttachment::described(item, name, Vec::new(), true);
        let upload_url = format!("{}/upload/{session}?authtoken={token}", self.base);
        self.sessions.insert(
            session,
            Session {
                draft: id.to_string(),
                token,
                attachment,
                size: size as usize,
            },
        );
        Ok(Answer::ok(
            201,
            json!({
                "@odata.context": format!("{}/v1.0/$metadata#microsoft.graph.uploadSession", self.base),
                "uploadUrl": upload_url,
                "expirationDateTime": "2030-01-01T00:00:00.0000000Z",
                "nextExpectedRanges": ["0-"],
            }),
        ))
    }

    fn upload(
        &mut self,
        session: &str,
        query: &str,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Answer> {
        if headers.contains_key(header::AUTHORIZATION) {
            return Err(Answer::error(
                401,
                "InvalidAuthenticationToken",
                "An upload URL is pre-authenticated: the request must not carry an Authorization header.",
            ));
        }
        let Some(s) = self.sessions.get_mut(session) else {
            return Err(Answer::error(
                404,
                "ErrorItemNotFound",
                "The upload session was not found.",
            ));
        };
        if query != format!("authtoken={}", s.token) {
            return Err(Answer::error(
                401,
                "InvalidAuthenticationToken",
                "The upload URL's token is not valid.",
            ));
        }
        let bad = |m: String| Answer::error(400, "InvalidRange", &m);
        let range = headers
            .get(header::CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let (first, last, total) =
            parse_range(range).ok_or_else(|| bad(format!("bad Content-Range `{range}`")))?;
        let received = s.attachment.bytes.len();
        if total != s.size || first != received || last < first || last - first + 1 != body.len() {
            return Err(bad(format!(
                "expected bytes {received}-.../{}, got `{range}` with {} bytes",
                s.size,
                body.len()
            )));
        }
        let is_last = last + 1 == total;
        if body.len() > MAX_CHUNK || (!is_last && !body.len().is_multiple_of(CHUNK_UNIT)) {
            return Err(bad(format!(
                "chunk of {} bytes: at most 4 MB, a multiple of 320 KiB",
                body.len()
            )));
        }
        s.attachment.bytes.extend_from_slice(body);
        if !is_last {
            return Ok(Answer::ok(
                200,
                json!({
                    "expirationDateTime": "2030-01-01T00:00:00.0000000Z",
                    "nextExpectedRanges": [format!("{}-", last + 1)],
                }),
            ));
        }
        let Some(done) = self.sessions.remove(session) else {
            return Err(bad("session vanished".into()));
        };
        if let Some(Draft {
            content: SentContent::Json(j),
            ..
        }) = self.drafts.get_mut(&done.draft)
        {
            j.attachments.push(done.attachment);
        }
        Ok(Answer::empty(201))
    }

    fn send_draft(&mut self, mailbox: &str, id: &str) -> Result<Answer> {
        let content = self.draft(mailbox, id)?.content.clone();
        self.record(mailbox, content, "draft", true)?;
        self.drafts.remove(id);
        Ok(Answer::empty(202))
    }

    /// Checks sender and recipients and records the message.
    fn record(
        &mut self,
        mailbox: &str,
        content: SentContent,
        via: &'static str,
        save: bool,
    ) -> Result<()> {
        let (from, to, cc, bcc) = match &content {
            SentContent::Mime(m) => {
                let parsed = parse_mime(m)?;
                let from = parsed
                    .from()
                    .and_then(|f| f.first())
                    .and_then(|a| a.address())
                    .map(str::to_owned);
                (
                    from,
                    list(parsed.to()),
                    list(parsed.cc()),
                    list(parsed.bcc()),
                )
            }
            SentContent::Json(j) => (j.from.clone(), j.to.clone(), j.cc.clone(), j.bcc.clone()),
        };
        if from.is_some_and(|f| !f.eq_ignore_ascii_case(mailbox)) {
            return Err(Answer::error(
                403,
                "ErrorSendAsDenied",
                "The user account which was used to submit this request does not have the right to send mail on behalf of the specified sending account.",
            ));
        }
        if to.is_empty() && cc.is_empty() && bcc.is_empty() {
            return Err(Answer::error(
                400,
                "ErrorInvalidRecipients",
                "At least one recipient is not valid., A message can't be sent because it contains no recipients.",
            ));
        }
        self.sent.push(SentMail {
            mailbox: mailbox.to_string(),
            content,
            to,
            cc,
            bcc,
            via,
            save_to_sent_items: save,
        });
        Ok(())
    }
}
