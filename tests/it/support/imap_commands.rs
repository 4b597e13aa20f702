//! Authenticated-state commands of the fake Exchange Online IMAP server: folder listing and
//! status, SELECT/EXAMINE, CREATE, APPEND, NAMESPACE and IDLE; selected-state commands are
//! routed on to `imap_selected`.

use std::io;
use std::sync::Arc;

use super::imap_session::{Outcome, Selected, Session, bad, no, ok};
use super::imap_store::{Folder, Mailbox, now, parse_date_time};
use super::imap_wire::{Token, quote_name, reply};

/// Commands that need a selected folder.
const SELECTED_ONLY: [&str; 10] = [
    "CHECK", "CLOSE", "COPY", "EXPUNGE", "FETCH", "MOVE", "SEARCH", "STORE", "UID", "UNSELECT",
];

impl Session {
    /// A command after a successful AUTHENTICATE.
    pub(super) async fn authenticated(
        &mut self,
        name: &str,
        args: &[Token],
    ) -> io::Result<Outcome> {
        Ok(match name {
            "AUTHENTICATE" | "LOGIN" | "STARTTLS" => bad(reply::INVALID_STATE),
            "SELECT" => self.select(args, false),
            "EXAMINE" => self.select(args, true),
            "LIST" => self.list(args, false),
            "LSUB" => self.list(args, true),
            "STATUS" => self.status(args),
            "NAMESPACE" => {
                self.io.queue(r#"* NAMESPACE (("" "/")) NIL NIL"#);
                ok("NAMESPACE completed.")
            }
            "CREATE" => self.create(args),
            "DELETE" | "RENAME" => no(reply::UNSUPPORTED),
            "SUBSCRIBE" | "UNSUBSCRIBE" => ok(format!("{name} completed.")),
            "APPEND" => self.append(args),
            "IDLE" => self.idle().await?,
            _ if SELECTED_ONLY.contains(&name) => match self.selected {
                Some(_) => self.in_folder(name, args).await?,
                None => bad(reply::INVALID_STATE),
            },
            _ => bad(reply::COMMAND_ERROR),
        })
    }

    /// Runs `f` on the logged-in mailbox (under the store lock: no I/O in `f`).
    pub(super) fn mailbox<R>(&self, f: impl FnOnce(&mut Mailbox) -> R) -> R {
        let key = self.login.as_ref().map_or("", |l| l.mailbox.as_str());
        f(self.shared.lock().mailboxes.mailbox_mut(key))
    }

    /// Runs `f` on the selected folder; `None` when nothing is selected.
    pub(super) fn with_folder<R>(&self, f: impl FnOnce(&mut Folder) -> R) -> Option<R> {
        let folder = self.selected.as_ref()?.folder.as_str();
        self.mailbox(|m| m.folder_mut(folder).map(f))
    }

    fn select(&mut self, args: &[Token], read_only: bool) -> Outcome {
        // A failed SELECT leaves no folder selected (RFC 3501 §6.3.1).
        self.selected = None;
        let [name] = args else {
            return bad(reply::ARGUMENT_ERROR);
        };
        let Some(name) = name.text() else {
            return bad(reply::ARGUMENT_ERROR);
        };
        let found = self.mailbox(|m| {
            m.folder(&name).map(|f| {
                let view: Vec<u32> = f.messages.iter().map(|m| m.uid).collect();
                let unseen = f.messages.iter().position(|m| !m.has_flag(r"\Seen"));
                (f.name.clone(), view, unseen, f.uid_validity, f.uid_next)
            })
        });
        let Some((folder, view, unseen, validity, next)) = found else {
            return no(reply::NO_SUCH_FOLDER);
        };
        let permanent = if read_only { "()" } else { reply::FLAGS };
        self.io.queue(&format!("* {} EXISTS", view.len()));
        self.io.queue("* 0 RECENT");
        self.io.queue(&format!("* FLAGS {}", reply::FLAGS));
        self.io.queue(&format!(
            "* OK [PERMANENTFLAGS {permanent}] Permanent flags"
        ));
        if let Some(first) = unseen {
            let line = format!("* OK [UNSEEN {}] Is the first unseen message", first + 1);
            self.io.queue(&line);
        }
        self.io
            .queue(&format!("* OK [UIDVALIDITY {validity}] UIDVALIDITY value"));
        self.io.queue(&format!(
            "* OK [UIDNEXT {next}] The next unique identifier value"
        ));
        self.selected = Some(Selected {
            folder,
            read_only,
            view,
        });
        match read_only {
            true => ok("[READ-ONLY] EXAMINE completed."),
            false => ok("[READ-WRITE] SELECT completed."),
        }
    }

    fn list(&mut self, args: &[Token], lsub: bool) -> Outcome {
        let verb = if lsub { "LSUB" } else { "LIST" };
        let [reference, pattern] = args else {
            return bad(reply::ARGUMENT_ERROR);
        };
        let (Some(reference), Some(pattern)) = (reference.text(), pattern.text()) else {
            return bad(reply::ARGUMENT_ERROR);
        };
        if pattern.is_empty() && !lsub {
            // RFC 3501 §6.3.8: the hierarchy delimiter.
            self.io.queue(r#"* LIST (\Noselect) "/" """#);
            return ok("LIST completed.");
        }
        let pattern = match reference.is_empty() || reference.ends_with('/') {
            true => format!("{reference}{pattern}"),
            false => format!("{reference}/{pattern}"),
        };
        let names: Vec<String> =
            self.mailbox(|m| m.folders().iter().map(|f| f.name.clone()).collect());
        for name in names
            .iter()
            .filter(|n| wildcard(pattern.as_bytes(), n.as_bytes()))
        {
            let attributes = match (lsub, name.as_str()) {
                (false, "Sent Items") => r"\HasNoChildren \Sent",
                _ => r"\HasNoChildren",
            };
            let line = format!("* {verb} ({attributes}) \"/\" {}", quote_name(name));
            self.io.queue(&line);
        }
        ok(format!("{verb} completed."))
    }

    fn status(&mut self, args: &[Token]) -> Outcome {
        let [name, Token::List(items)] = args else {
            return bad(reply::ARGUMENT_ERROR);
        };
        let Some(name) = name.text() else {
            return bad(reply::ARGUMENT_ERROR);
        };
        let found = self.mailbox(|m| {
            m.folder(&name).map(|f| {
                let values = [
                    ("MESSAGES", f.messages.len()),
                    ("RECENT", 0),
                    ("UIDNEXT", f.uid_next as usize),
                    ("UIDVALIDITY", f.uid_validity as usize),
                    ("UNSEEN", f.unseen()),
                ];
                (f.name.clone(), values)
            })
        });
        let Some((folder, values)) = found else {
            return no(reply::NO_SUCH_FOLDER);
        };
        let mut parts = Vec::new();
        for item in items {
            let value = values.iter().find(|(key, _)| item.is(key));
            let Some((key, value)) = value else {
                return bad(reply::ARGUMENT_ERROR);
            };
            parts.push(format!("{key} {value}"));
        }
        let line = format!("* STATUS {} ({})", quote_name(&folder), parts.join(" "));
        self.io.queue(&line);
        ok("STATUS completed.")
    }

    fn create(&mut self, args: &[Token]) -> Outcome {
        let [name] = args else {
            return bad(reply::ARGUMENT_ERROR);
        };
        let Some(name) = name.text().filter(|n| !n.is_empty()) else {
            return bad(reply::ARGUMENT_ERROR);
        };
        let name = name.trim_end_matches('/').to_string();
        match self.mailbox(|m| m.create(&name)) {
            true => ok("CREATE completed."),
            false => no(reply::FOLDER_EXISTS),
        }
    }

    /// `APPEND folder [(flags)] ["date-time"] literal` (RFC 3501 §6.3.11, UIDPLUS APPENDUID).
    fn append(&mut self, args: &[Token]) -> Outcome {
        let [name, options @ .., Token::Str(message)] = args else {
            return bad(reply::ARGUMENT_ERROR);
        };
        let Some(name) = name.text() else {
            return bad(reply::ARGUMENT_ERROR);
        };
        let (mut flags, mut date) = (Vec::new(), None);
        for option in options {
            match option {
                Token::List(list) => match list.iter().map(Token::atom).collect::<Option<Vec<_>>>()
                {
                    Some(atoms) => flags = atoms.into_iter().map(String::from).collect(),
                    None => return bad(reply::ARGUMENT_ERROR),
                },
                Token::Str(text) => match parse_date_time(&String::from_utf8_lossy(text)) {
                    Some(secs) => date = Some(secs),
                    None => return bad(reply::ARGUMENT_ERROR),
                },
                Token::Atom(_) => return bad(reply::ARGUMENT_ERROR),
            }
        }
        let data: Arc<[u8]> = Arc::from(message.as_slice());
        let date = date.unwrap_or_else(now);
        let stored = self.mailbox(|m| {
            m.folder_mut(&name)
                .map(|f| (f.uid_validity, f.append(data, &flags, date)))
        });
        let Some((validity, uid)) = stored else {
            return no(format!("[TRYCREATE] {}", reply::NO_SUCH_FOLDER));
        };
        self.shared.notify_changes();
        ok(format!("[APPENDUID {validity} {uid}] APPEND completed."))
    }
}

/// LIST pattern matching (RFC 3501 §6.3.8): `*` matches anything, `%` anything but `/`;
/// case-insensitive like Exchange's folder names.
fn wildcard(pattern: &[u8], name: &[u8]) -> bool {
    match pattern.split_first() {
        None => name.is_empty(),
        Some((b'*', rest)) => (0..=name.len()).any(|i| wildcard(rest, &name[i..])),
        Some((b'%', rest)) => (0..=name.len())
            .take_while(|&i| i == 0 || name[i - 1] != b'/')
            .any(|i| wildcard(rest, &name[i..])),
        Some((&c, rest)) => name
            .split_first()
            .is_some_and(|(&n, tail)| n.eq_ignore_ascii_case(&c) && wildcard(rest, tail)),
    }
}
