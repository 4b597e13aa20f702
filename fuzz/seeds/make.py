#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets (fuzz/seeds/<target>/): complete client
conversations and messages that reach each target's deep states (a login, STARTTLS, a
DATA end, header senders, BDAT LAST). Run it from anywhere after changing it; the seeds
it writes are committed. Input formats: fuzz/fuzz_targets/common/transcript.rs (pre-auth
targets) and the head comment of each target."""

import base64
import os
import shutil

HERE = os.path.dirname(os.path.abspath(__file__))
HANDSHAKE = b"\0TLS\0"
USER, PASSWORD = b"alice@contoso.com", b"secret-1"


def b64(b):
    return base64.b64encode(b)


PLAIN = b64(b"\0" + USER + b"\0" + PASSWORD)

# Transcript flags (byte 0).
TLS, AUTH, AUTH_AFTER_TLS, LOOPBACK, PLAIN_LOOPBACK = 1, 2, 4, 8, 16
SMTP, IMAP, POP3, TIGHT = 0, 32, 64, 128
OPEN = AUTH | AUTH_AFTER_TLS | LOOPBACK | PLAIN_LOOPBACK  # a login is allowed at once
REMOTE = AUTH_AFTER_TLS  # from afar: only after STARTTLS


def transcript(flags, client, chunk=6, successes=1, failure=0):
    return bytes([flags, chunk, successes, failure]) + client


SMTP_CONVERSATIONS = [
    (OPEN, b"EHLO client.example\r\nAUTH PLAIN " + PLAIN + b"\r\n", 1),
    (OPEN, b"EHLO c\r\nAUTH PLAIN\r\n" + PLAIN + b"\r\n", 1),
    (OPEN, b"EHLO c\r\nAUTH LOGIN\r\n" + b64(USER) + b"\r\n" + b64(PASSWORD) + b"\r\n", 1),
    (OPEN, b"EHLO c\r\nAUTH LOGIN " + b64(USER) + b"\r\n" + b64(PASSWORD) + b"\r\n", 1),
    (OPEN, b"EHLO c\r\nAUTH PLAIN " + PLAIN + b"\r\nAUTH PLAIN " + PLAIN + b"\r\nAUTH PLAIN " + PLAIN + b"\r\n", 4),
    (OPEN, b"EHLO c\r\nAUTH PLAIN\r\n*\r\nAUTH XOAUTH2 dXNlcj0BAQ==\r\nMAIL FROM:<a@b.c>\r\nRSET\r\nNOOP\r\nVRFY x\r\nHELP\r\nQUIT\r\n", 0),
    (REMOTE, b"EHLO c\r\nAUTH PLAIN " + PLAIN + b"\r\nSTARTTLS\r\n" + HANDSHAKE + b"EHLO c\r\nAUTH PLAIN " + PLAIN + b"\r\n", 1),
    (REMOTE, b"EHLO c\r\nSTARTTLS\r\nAUTH PLAIN " + PLAIN + b"\r\n" + HANDSHAKE + b"EHLO c\r\nAUTH LOGIN\r\n" + b64(USER) + b"\r\n" + b64(PASSWORD) + b"\r\n", 1),
    (TLS | AUTH, b"EHLO c\r\nSTARTTLS\r\nAUTH PLAIN =\r\nAUTH PLAIN " + PLAIN + b"\r\n", 1),
    (OPEN, b"EHLO c\r\n" + b"x" * 600 + b"\r\nAUTH PLAIN " + b"A" * 300 + b"\r\nAUTH PLAIN " + PLAIN + b"\r\n", 1),
]

IMAP_CONVERSATIONS = [
    (OPEN, b"a1 CAPABILITY\r\na2 LOGIN " + USER + b" " + PASSWORD + b"\r\n", 1),
    (OPEN, b'a1 LOGIN "' + USER + b'" "se\\"cret"\r\n', 1),
    (OPEN, b"a1 LOGIN {17}\r\n" + USER + b" {8}\r\n" + PASSWORD + b"\r\n", 1),
    (OPEN, b"a1 LOGIN {17+}\r\n" + USER + b" {8+}\r\n" + PASSWORD + b"\r\n", 1),
    (OPEN, b"a1 AUTHENTICATE PLAIN " + PLAIN + b"\r\n", 1),
    (OPEN, b"a1 AUTHENTICATE PLAIN\r\n" + PLAIN + b"\r\n", 1),
    (OPEN, b"a1 AUTHENTICATE LOGIN\r\n" + b64(USER) + b"\r\n" + b64(PASSWORD) + b"\r\n", 1),
    (OPEN, b"a1 ID NIL\r\na2 NOOP\r\na3 LOGIN a b\r\na4 LOGIN a b\r\na5 LOGIN " + USER + b" " + PASSWORD + b"\r\n", 4),
    (OPEN, b"a1 AUTHENTICATE PLAIN\r\n*\r\na2 ENABLE x\r\na3 SELECT INBOX\r\na4 LOGOUT\r\n", 0),
    (REMOTE, b"a1 LOGIN a b\r\na2 STARTTLS\r\n" + HANDSHAKE + b"a3 CAPABILITY\r\na4 LOGIN " + USER + b" " + PASSWORD + b"\r\n", 1),
    (REMOTE, b"a1 STARTTLS\r\na2 LOGIN " + USER + b" x\r\n" + HANDSHAKE + b"a3 AUTHENTICATE PLAIN " + PLAIN + b"\r\n", 1),
    (OPEN, b"a1 LOGIN {4097}\r\na2 LOGIN {99999999999}\r\na3 LOGIN " + USER + b" " + PASSWORD + b"\r\n", 1),
]

POP3_CONVERSATIONS = [
    (OPEN, b"CAPA\r\nUSER " + USER + b"\r\nPASS " + PASSWORD + b"\r\n", 1),
    (OPEN, b"AUTH PLAIN " + PLAIN + b"\r\n", 1),
    (OPEN, b"AUTH PLAIN\r\n" + PLAIN + b"\r\n", 1),
    (OPEN, b"AUTH LOGIN\r\n" + b64(USER) + b"\r\n" + b64(PASSWORD) + b"\r\n", 1),
    (OPEN, b"USER a\r\nPASS b\r\nUSER a\r\nPASS b\r\nUSER " + USER + b"\r\nPASS " + PASSWORD + b"\r\n", 4),
    (OPEN, b"APOP a b\r\nSTAT\r\nUIDL\r\nNOOP\r\nAUTH\r\nQUIT\r\n", 0),
    (REMOTE, b"USER a\r\nSTLS\r\n" + HANDSHAKE + b"CAPA\r\nUSER " + USER + b"\r\nPASS " + PASSWORD + b"\r\n", 1),
    (REMOTE, b"STLS\r\nUSER x\r\n" + HANDSHAKE + b"AUTH PLAIN " + PLAIN + b"\r\n", 1),
]

# After login: as shared@contoso.com, whose delegate alice@contoso.com may not be used.
MAIL = b"MAIL FROM:<shared@contoso.com> SIZE=120 BODY=8BITMIME\r\nRCPT TO:<bob@example.com>\r\n"
GOOD = b"From: Shared <shared@contoso.com>\r\nSender: shared@contoso.com\r\nTo: bob@example.com\r\nSubject: hi\r\n\r\nbody\r\n..dot line\r\n"
MESSAGES = [
    GOOD,
    b"From: alice@contoso.com\r\nSubject: forged\r\n\r\nx\r\n",
    b"From: alice@contoso.com\r\nFrom: shared@contoso.com\r\nSubject: two\r\n\r\nx\r\n",
    b" \r\nFrom: alice@contoso.com\r\n\r\nx\r\n",
    b"Subject: x\n\r\nFrom: alice@contoso.com\r\n\r\nx\r\n",
    b"From: shared@contoso.com\r\nSender: \"A, B\" <alice@contoso.com> (c)\r\n\r\nx\r\n",
    b"From: =?utf-8?q?S?= <shared@contoso.com>,\r\n\tshared@contoso.com (folded)\r\nSubject: folded\r\n\r\nx\r\n",
    b"From: undisclosed:;\r\nSender: <>\r\n\r\n",
    b"Subject: no from\r\n\r\nbody\r\n",
]


def stuffed(message):
    return b"\r\n".join(b"." + l if l.startswith(b".") else l for l in message.split(b"\r\n"))


SESSIONS = [
    (0x03, MAIL + b"DATA\r\n" + stuffed(GOOD) + b".\r\nQUIT\r\n"),
    (0x03, b"EHLO c\r\n" + MAIL + b"RCPT TO:<carol@example.org>\r\nBDAT 20\r\n" + GOOD[:20] + b"BDAT " + str(len(GOOD) - 20).encode() + b" LAST\r\n" + GOOD[20:] + b"NOOP\r\n"),
    (0x23, b"EHLO c\r\n" + MAIL + b"BDAT " + str(len(GOOD)).encode() + b" LAST\r\n" + GOOD + MAIL + b"DATA\r\n" + stuffed(GOOD) + b".\r\nRSET\r\n"),
    (0x00, MAIL + b"DATA\r\n" + b"x" * 1500 + b"\r\n.\r\n" + MAIL + b"BDAT 1500 LAST\r\n" + b"y" * 1500),
    (0x07, MAIL + b"DATA\r\n" + stuffed(GOOD) + b".\r\n"),
    (0x03, b"MAIL FROM:<shared@contoso.com> SIZE=99999999\r\nMAIL FROM:<alice@contoso.com>\r\nRCPT TO:<x@y.z>\r\nDATA\r\nMAIL FROM:<>\r\nRCPT TO:<bob@localhost>\r\nRCPT TO:<a@x.com,b@y.com>\r\nDATA\r\nBDAT x\r\n"),
    (0x03, b"RCPT TO:<a@b.c>\r\nDATA\r\nBDAT 3\r\nabcHELO c\r\nVRFY x\r\nSTARTTLS\r\nAUTH PLAIN\r\nHELP\r\nXYZ\r\n" + b"z" * 2100 + b"\r\n"),
] + [(0x03, MAIL + b"DATA\r\n" + stuffed(m) + b".\r\n" + MAIL + b"BDAT " + str(len(m)).encode() + b" LAST\r\n" + m) for m in MESSAGES[1:]]


def write(target, seeds):
    folder = os.path.join(HERE, target)
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    for i, seed in enumerate(seeds):
        with open(os.path.join(folder, f"{i:02}"), "wb") as f:
            f.write(seed)


def conversations(protocol, table, tight=False):
    out = []
    for flags, client, successes in table:
        flags |= protocol | (TIGHT if tight else 0)
        out.append(transcript(flags, client, successes=successes))
    return out


write("smtp_preauth", conversations(SMTP, SMTP_CONVERSATIONS) + [transcript(OPEN, SMTP_CONVERSATIONS[0][1], chunk=0)])
write("imap_preauth", conversations(IMAP, IMAP_CONVERSATIONS) + [transcript(OPEN, IMAP_CONVERSATIONS[2][1], chunk=2)])
write("pop3_preauth", conversations(POP3, POP3_CONVERSATIONS))
write(
    "preauth_driver",
    conversations(SMTP, SMTP_CONVERSATIONS)
    + conversations(IMAP, IMAP_CONVERSATIONS)
    + conversations(POP3, POP3_CONVERSATIONS)
    + [transcript(OPEN | SMTP | TIGHT, b"NOOP\r\n" * 600), transcript(OPEN | IMAP | TIGHT, b"a1 LOGIN {500}\r\n" + b"x" * 500 + b" y\r\n" * 8)],
)
write(
    "submission",
    [bytes([7]) + MAIL.split(b"\r\n")[0] + b"\r\n" + stuffed(m) + b".\r\nQUIT\r\n" for m in MESSAGES]
    + [bytes([1]) + b"RCPT TO:<bob@example.com> NOTIFY=NEVER\r\n" + stuffed(GOOD) + b".\r\n", bytes([3]) + b"BDAT 120 LAST\r\n" + GOOD],
)
write("smtp_session", [bytes([flags, 64]) + s for flags, s in SESSIONS] + [bytes([0x03, 1]) + SESSIONS[0][1]])
write("data_differential", [bytes([5]) + stuffed(m) + b".\r\nQUIT\r\n" for m in MESSAGES] + [bytes([1]) + b"a\n.\r\nMAIL FROM:<x@y.z>\r\n.\r\n", bytes([2]) + b"a\r\n.\nb\r\n.\r\n"])
write(
    "graph_conversion",
    [
        b"bob@example.com carol@example.org dave@example.net\n" + GOOD.replace(b"To: bob@example.com", b"To: Bob <bob@example.com>\r\nCc: carol@example.org\r\nBcc: x@y.z,\r\n  w@v.u"),
        b"bob@example.com\nFrom: a@b.c\r\nTo: bob@example.com, other@example.com\r\nImportance: high\r\nX-Priority: 1\r\nX-A: 1\r\nX-B: 2\r\n\r\nplain\r\n",
        b"bob@example.com " + b" ".join(b"r%d@example.com" % i for i in range(12)) + b"\n"
        + b"From: a@b.c\r\nTo: bob@example.com\r\nMessage-ID: <m@x>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/html\r\n\r\n<p>hi</p>\r\n--b\r\nContent-Type: application/pdf; name=\"a.pdf\"\r\nContent-Disposition: attachment; filename=\"a.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--b\r\nContent-Type: image/png\r\nContent-ID: <img1>\r\n\r\nPNG\r\n--b\r\nContent-Type: message/rfc822\r\n\r\nFrom: x@y.z\r\n\r\ninner\r\n--b--\r\n",
    ],
)

# PROXY protocol headers (fuzz_targets/proxy_header.rs): the connection's first bytes.
V2 = b"\r\n\r\n\0\r\nQUIT\n"


def v2(command, family, addresses, tlvs=b""):
    body = addresses + tlvs
    return V2 + bytes([0x20 | command, family]) + len(body).to_bytes(2, "big") + body


V2_TCP4 = bytes([192, 0, 2, 7, 10, 0, 0, 5]) + (51234).to_bytes(2, "big") + (587).to_bytes(2, "big")
V2_TCP6 = bytes.fromhex("20010db8000000000000000000000007" "20010db8000000000000000000000005") + (51234).to_bytes(2, "big") + (993).to_bytes(2, "big")
TLVS = bytes([0x01, 0, 8]) + b"smtp/1.0" + bytes([0x04, 0, 4]) + b"\0\0\0\0" + bytes([0x20, 0, 5, 1, 0, 0, 0, 0])
write(
    "proxy_header",
    [
        b"PROXY TCP4 192.0.2.7 10.0.0.5 51234 587\r\nEHLO client\r\n",
        b"PROXY TCP6 2001:db8::7 2001:db8::5 51234 993\r\n\x16\x03\x01",
        b"PROXY TCP6 ::ffff:192.0.2.7 ::ffff:10.0.0.5 1 587\r\n",
        b"PROXY UNKNOWN\r\n",
        b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n",
        b"PROXY TCP4 192.0.2.7 10.0.0.5 51234 ",
        v2(1, 0x11, V2_TCP4) + b"EHLO client\r\n",
        v2(1, 0x21, V2_TCP6),
        v2(0, 0x00, b""),
        v2(0, 0x11, V2_TCP4),
        v2(1, 0x11, V2_TCP4, TLVS),
        v2(1, 0x31, bytes(216)),
        v2(1, 0x11, V2_TCP4)[:20],
    ],
)
