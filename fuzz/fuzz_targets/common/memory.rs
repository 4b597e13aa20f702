//! The in-memory side of the session-driver targets: a paused-clock runtime (a session
//! that waits for its idle timeout gets it at once, so nothing hangs and nothing depends
//! on the machine's speed), a pipe, and checks of what the relay wrote.

use std::future::Future;

use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::runtime::Runtime;

/// Bytes the pipe buffers each way: more than any input the targets take.
pub const PIPE_BYTES: usize = 1 << 20;

thread_local! {
    static RUNTIME: Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime");
}

/// Runs `f` to completion on this thread's paused-clock runtime.
pub fn block_on<F: Future>(f: F) -> F::Output {
    RUNTIME.with(|rt| rt.block_on(f))
}

/// Writes `input` in pieces of `chunk` bytes, letting the session run between them,
/// then ends the client's side. Stops when the session closed the connection.
pub async fn write_in_pieces<W: AsyncWrite + Unpin>(w: &mut W, input: &[u8], chunk: usize) {
    for piece in input.chunks(chunk.max(1)) {
        if w.write_all(piece).await.is_err() {
            return;
        }
        tokio::task::yield_now().await;
    }
    let _ = w.shutdown().await;
}

/// Sends `input` over `pipe` and reads what the relay answers until it closes.
pub async fn converse(pipe: DuplexStream, input: &[u8], chunk: usize) -> Vec<u8> {
    let (mut rd, mut wr) = tokio::io::split(pipe);
    let read = async {
        let mut out = Vec::new();
        let _ = rd.read_to_end(&mut out).await;
        out
    };
    let ((), out) = tokio::join!(write_in_pieces(&mut wr, input, chunk), read);
    out
}

/// What the relay wrote is whole CRLF lines with no CR or LF elsewhere; the lines.
pub fn reply_lines(out: &[u8]) -> Vec<&[u8]> {
    if out.is_empty() {
        return Vec::new();
    }
    let body = out
        .strip_suffix(b"\r\n")
        .unwrap_or_else(|| panic!("a reply not CRLF-terminated: {out:?}"));
    let pieces: Vec<&[u8]> = body.split(|&b| b == b'\n').collect();
    let last = pieces.len() - 1;
    let mut lines = Vec::with_capacity(pieces.len());
    for (i, piece) in pieces.into_iter().enumerate() {
        let line = if i < last {
            piece
                .strip_suffix(b"\r")
                .unwrap_or_else(|| panic!("a bare LF in a reply: {out:?}"))
        } else {
            piece
        };
        assert!(!line.contains(&b'\r'), "a bare CR in a reply: {out:?}");
        lines.push(line);
    }
    lines
}
