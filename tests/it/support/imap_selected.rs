//! Selected-state commands of the fake Exchange Online IMAP server: FETCH, STORE, SEARCH,
//! EXPUNGE, COPY/MOVE, CHECK, CLOSE, UNSELECT and their `UID` forms. Message numbers map to
//! UIDs through the session's view of the folder (`Selected::view`).

use std::collections::HashSet;
use std::io;

use super::imap_fetch::{self, Item, Piece};
use super::imap_search::{self, Candidate};
use super::imap_session::{Outcome, Session, bad, no, ok};
use super::imap_store::SEEN;
use super::imap_wire::{SeqSet, Token, format_set, reply};

impl Session {
    /// A command that needs a selected folder (the caller checked that one is).
    pub(super) async fn in_folder(&mut self, name: &str, args: &[Token]) -> io::Result<Outcome> {
        let (name, args, by_uid) = match name {
            "UID" => match args.split_first() {
                Some((Token::Atom(sub), rest)) => (sub.to_ascii_uppercase(), rest, true),
                _ => return Ok(bad(reply::ARGUMENT_ERROR)),
            },
            _ => (name.to_string(), args, false),
        };
        Ok(match (name.as_str(), by_uid) {
            ("FETCH", _) => return self.fetch(args, by_uid).await,
            ("STORE", _) => self.store(args, by_uid),
            ("SEARCH", _) => self.search(args, by_uid),
            ("COPY", _) => self.copy(args, by_uid, false),
            ("MOVE", _) => self.copy(args, by_uid, true),
            ("EXPUNGE", _) => self.expunge(args, by_uid),
            ("CHECK", false) => ok("CHECK completed."),
            ("CLOSE", false) => self.close(),
            ("UNSELECT", false) => {
                self.selected = None;
                ok("UNSELECT completed.")
            }
            _ => bad(reply::ARGUMENT_ERROR),
        })
    }

    /// The UIDs of the selected folder's view, in message-number order.
    fn view(&self) -> &[u32] {
        self.selected.as_ref().map_or(&[][..], |s| &s.view[..])
    }

    fn read_only(&self) -> bool {
        self.selected.as_ref().is_some_and(|s| s.read_only)
    }

    /// (message number, UID) of the view entries that a message-number or UID set names.
    fn targets(&self, set: Option<&Token>, by_uid: bool) -> Result<Vec<(u32, u32)>, Outcome> {
        let set = set
            .and_then(Token::atom)
            .and_then(SeqSet::parse)
            .ok_or_else(|| bad(reply::ARGUMENT_ERROR))?;
        let view = self.view();
        let numbered = view.iter().enumerate().map(|(i, &uid)| (i as u32 + 1, uid));
        if by_uid {
            let max = view.last().copied().unwrap_or(0);
            return Ok(numbered
                .filter(|&(_, uid)| set.contains(uid, max))
                .collect());
        }
        let count = view.len() as u32;
        if set.max_number() > count {
            return Err(bad(reply::BAD_MESSAGE_SET));
        }
        Ok(numbered.filter(|&(n, _)| set.contains(n, count)).collect())
    }

    async fn fetch(&mut self, args: &[Token], by_uid: bool) -> io::Result<Outcome> {
        let targets = match self.targets(args.first(), by_uid) {
            Ok(targets) => targets,
            Err(outcome) => return Ok(outcome),
        };
        let Some(mut items) = imap_fetch::parse_items(args.get(1..).unwrap_or_default()) else {
            return Ok(bad(reply::ARGUMENT_ERROR));
        };
        if by_uid && !items.contains(&Item::Uid) {
            items.insert(0, Item::Uid);
        }
        let sets_seen = !self.read_only() && items.iter().any(Item::sets_seen);
        // Under the lock only the pieces are built; message bytes stay shared with the store.
        let responses = self.with_folder(|folder| {
            let mut responses = Vec::new();
            for &(seq, uid) in &targets {
                let Some(msg) = folder.get_mut(uid) else {
                    continue;
                };
                let changed = sets_seen && !msg.has_flag(SEEN);
                if changed {
                    msg.add_flag(SEEN);
                }
                responses.push(imap_fetch::respond(seq, msg, &items, changed));
            }
            responses
        });
        for piece in responses.into_iter().flatten().flatten() {
            match piece {
                Piece::Text(text) => self.io.queue_raw(&text),
                Piece::Literal(data, range) => {
                    self.io
                        .queue_raw(format!("{{{}}}\r\n", range.len()).as_bytes());
                    self.io.write_literal(&data[range]).await?;
                }
            }
        }
        Ok(ok("FETCH completed."))
    }

    /// `STORE set [+|-]FLAGS[.SILENT] (flags)`.
    fn store(&mut self, args: &[Token], by_uid: bool) -> Outcome {
        if self.read_only() {
            return no(reply::INVALID_STATE);
        }
        let targets = match self.targets(args.first(), by_uid) {
            Ok(targets) => targets,
            Err(outcome) => return outcome,
        };
        let Some(operation) = args.get(1).and_then(Token::atom) else {
            return bad(reply::ARGUMENT_ERROR);
        };
        let operation = operation.to_ascii_uppercase();
        let (operation, silent) = match operation.strip_suffix(".SILENT") {
            Some(operation) => (operation.to_string(), true),
            None => (operation, false),
        };
        let flags = match args.get(2..).unwrap_or_default() {
            [Token::List(list)] => list.iter().map(Token::atom).collect::<Option<Vec<_>>>(),
            [] => None,
            atoms => atoms.iter().map(Token::atom).collect(),
        };
        let (Some(flags), true) = (flags, ["FLAGS", "+FLAGS", "-FLAGS"].contains(&&*operation))
        else {
            return bad(reply::ARGUMENT_ERROR);
        };
        let lines = self.with_folder(|folder| {
            let mut lines = Vec::new();
            for &(seq, uid) in &targets {
                let Some(msg) = folder.get_mut(uid) else {
                    continue;
                };
                if operation == "FLAGS" {
                    msg.flags.clear();
                }
                for flag in &flags {
                    match operation.as_str() {
                        "-FLAGS" => msg.remove_flag(flag),
                        _ => msg.add_flag(flag),
                    }
                }
                let uid = if by_uid {
                    format!(" UID {uid}")
                } else {
                    String::new()
                };
                lines.push(format!("* {seq} FETCH ({}{uid})", imap_fetch::flags(msg)));
            }
            lines
        });
        if !silent {
            for line in lines.unwrap_or_default() {
                self.io.queue(&line);
            }
        }
        ok("STORE completed.")
    }

    fn search(&mut self, args: &[Token], by_uid: bool) -> Outcome {
        let Some(key) = imap_search::parse(args) else {
            return bad(reply::ARGUMENT_ERROR);
        };
        let view = self.view().to_vec();
        let (count, max_uid) = (view.len() as u32, view.last().copied().unwrap_or(0));
        let hits = self.with_folder(|folder| {
            let mut hits = Vec::new();
            for (i, &uid) in view.iter().enumerate() {
                let Some(msg) = folder.get(uid) else {
                    continue;
                };
                let seq = i as u32 + 1;
                let candidate = Candidate {
                    seq,
                    count,
                    max_uid,
                    msg,
                };
                if key.matches(&candidate) {
                    hits.push(if by_uid { uid } else { seq });
                }
            }
            hits
        });
        let mut line = "* SEARCH".to_string();
        for hit in hits.unwrap_or_default() {
            line.push_str(&format!(" {hit}"));
        }
        self.io.queue(&line);
        ok("SEARCH completed.")
    }

    /// EXPUNGE, or UIDPLUS `UID EXPUNGE set`; the `* n EXPUNGE` lines come from the view sync.
    fn expunge(&mut self, args: &[Token], by_uid: bool) -> Outcome {
        if self.read_only() {
            return no(reply::INVALID_STATE);
        }
        let set = match (by_uid, args) {
            (false, []) => None,
            (true, [set]) => match set.atom().and_then(SeqSet::parse) {
                Some(set) => Some(set),
                None => return bad(reply::ARGUMENT_ERROR),
            },
            _ => return bad(reply::ARGUMENT_ERROR),
        };
        let gone = self.with_folder(|folder| {
            let max = folder.messages.last().map_or(0, |m| m.uid);
            folder.expunge(|uid| set.as_ref().is_none_or(|s| s.contains(uid, max)))
        });
        if gone.is_some_and(|g| !g.is_empty()) {
            self.shared.notify_changes();
        }
        ok("EXPUNGE completed.")
    }

    /// CLOSE expunges silently in a read-write folder, then leaves it.
    fn close(&mut self) -> Outcome {
        if !self.read_only() {
            let gone = self.with_folder(|folder| folder.expunge(|_| true));
            if gone.is_some_and(|g| !g.is_empty()) {
                self.shared.notify_changes();
            }
        }
        self.selected = None;
        ok("CLOSE completed.")
    }

    /// COPY, or MOVE (RFC 6851): copies with COPYUID (UIDPLUS), then removes the originals.
    fn copy(&mut self, args: &[Token], by_uid: bool, moving: bool) -> Outcome {
        let verb = if moving { "MOVE" } else { "COPY" };
        if moving && self.read_only() {
            return no(reply::INVALID_STATE);
        }
        let targets = match self.targets(args.first(), by_uid) {
            Ok(targets) => targets,
            Err(outcome) => return outcome,
        };
        let (Some(destination), 2) = (args.get(1).and_then(Token::text), args.len()) else {
            return bad(reply::ARGUMENT_ERROR);
        };
        let source = self
            .selected
            .as_ref()
            .map(|s| s.folder.clone())
            .unwrap_or_default();
        let copied = self.mailbox(|mailbox| {
            let from = mailbox.folder(&source)?;
            let copies: Vec<_> = targets
                .iter()
                .filter_map(|&(_, uid)| from.get(uid).cloned())
                .collect();
            let into = mailbox.folder_mut(&destination)?;
            let new: Vec<u32> = copies
                .iter()
                .map(|m| into.append(m.data.clone(), &m.flags, m.internal_date))
                .collect();
            let validity = into.uid_validity;
            let old: Vec<u32> = copies.iter().map(|m| m.uid).collect();
            if moving {
                let moved: HashSet<u32> = old.iter().copied().collect();
                let from = mailbox.folder_mut(&source)?;
                from.messages.retain(|m| !moved.contains(&m.uid));
            }
            Some((validity, old, new))
        });
        let Some((validity, old, new)) = copied else {
            return no(format!("[TRYCREATE] {}", reply::NO_SUCH_FOLDER));
        };
        self.shared.notify_changes();
        let code = match new.is_empty() {
            true => String::new(),
            false => format!(
                "[COPYUID {validity} {} {}] ",
                format_set(&old),
                format_set(&new)
            ),
        };
        if moving && !code.is_empty() {
            // RFC 6851 §4.3: COPYUID goes in an untagged OK before the expunges.
            self.io.queue(&format!("* OK {code}Messages copied."));
            return ok(format!("{verb} completed."));
        }
        ok(format!("{code}{verb} completed."))
    }
}
