//! DAP framing: `Content-Length: N\r\n\r\n` + N bytes of JSON, both ways (contract.md §4).
//!
//! The daemon's reader ends the whole session on one frame it cannot parse, so the writer side
//! here only ever encodes a complete, already-serialized `serde_json::Value` with its exact
//! byte length; there is no streaming writer that could leave half a frame behind. The reader
//! side is strict about what it needs (a `Content-Length` and a JSON object) and names the
//! problem in its error, so a bad frame from a peer is one clear log line, never a panic.

use serde_json::Value;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt};

/// Largest frame accepted from a peer. The daemon's biggest requests are `setBreakpoints` with
/// at most a few hundred entries of ≤ 20 × 10 000-char expressions; 16 MiB is far above that and
/// still bounds what a confused peer can make us allocate.
pub const MAX_FRAME_BYTES: usize = 16 << 20;

/// Longest header line accepted (`Content-Length: 16777216` is 24 bytes).
const MAX_HEADER_LINE: usize = 1024;

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("reading a DAP frame: {0}")]
    Io(#[from] std::io::Error),
    #[error("DAP header line is not UTF-8 or longer than {MAX_HEADER_LINE} bytes; the peer does not speak DAP")]
    BadHeader,
    #[error("DAP frame has no Content-Length header; the peer does not speak DAP")]
    NoContentLength,
    #[error("DAP Content-Length `{0}` is not a byte count")]
    BadContentLength(String),
    #[error("DAP frame of {0} bytes exceeds the {MAX_FRAME_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("connection closed in the middle of a DAP frame")]
    Truncated,
    #[error("DAP frame body is not a JSON object: {0}")]
    BadJson(String),
}

/// Reads the next frame's JSON body. `Ok(None)` on a clean EOF between frames (the daemon's
/// way to end a session, contract.md §0 rule 8) and on a connect-and-close readiness probe.
///
/// # Errors
/// I/O errors and malformed frames, see [`CodecError`].
pub async fn read_frame<R: AsyncBufRead + Unpin>(
    reader: &mut R,
) -> Result<Option<Value>, CodecError> {
    let mut content_length: Option<usize> = None;
    let mut saw_header = false;
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = (&mut *reader)
            .take(MAX_HEADER_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
            .await?;
        if n == 0 {
            return if saw_header {
                Err(CodecError::Truncated)
            } else {
                Ok(None)
            };
        }
        if line.len() > MAX_HEADER_LINE || !line.ends_with(b"\n") {
            return Err(if line.ends_with(b"\n") || line.len() > MAX_HEADER_LINE {
                CodecError::BadHeader
            } else {
                CodecError::Truncated
            });
        }
        let text = std::str::from_utf8(&line)
            .map_err(|_| CodecError::BadHeader)?
            .trim_end_matches(['\r', '\n']);
        if text.is_empty() {
            if !saw_header {
                // Blank lines before a header: tolerated, as the daemon's own reader does.
                continue;
            }
            break;
        }
        saw_header = true;
        if let Some((name, value)) = text.split_once(':') {
            if name.trim().eq_ignore_ascii_case("content-length") {
                let v = value.trim();
                content_length = Some(
                    v.parse()
                        .map_err(|_| CodecError::BadContentLength(v.to_owned()))?,
                );
            }
        }
    }
    let len = content_length.ok_or(CodecError::NoContentLength)?;
    if len > MAX_FRAME_BYTES {
        return Err(CodecError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            CodecError::Truncated
        } else {
            CodecError::Io(e)
        }
    })?;
    match serde_json::from_slice::<Value>(&body) {
        Ok(v @ Value::Object(_)) => Ok(Some(v)),
        Ok(other) => Err(CodecError::BadJson(format!("got {}", kind(&other)))),
        Err(e) => Err(CodecError::BadJson(e.to_string())),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// One complete frame: header plus the serialized body, with the exact byte length.
#[must_use]
pub fn encode_frame(msg: &Value) -> Vec<u8> {
    // Serializing a `Value` cannot fail: its keys are strings and it holds no non-finite floats
    // (serde_json's `Number` cannot represent them).
    let body = msg.to_string();
    let mut out = format!("Content-Length: {}\r\n\r\n", body.len()).into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    async fn read_all(bytes: &[u8]) -> Vec<Result<Option<Value>, String>> {
        let mut r = tokio::io::BufReader::new(bytes);
        let mut out = Vec::new();
        loop {
            let f = read_frame(&mut r).await.map_err(|e| e.to_string());
            let stop = !matches!(f, Ok(Some(_)));
            out.push(f);
            if stop {
                return out;
            }
        }
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    }

    #[test]
    fn round_trips_frames_back_to_back() {
        let a = json!({"seq":1,"type":"request","command":"initialize"});
        let b = json!({"seq":2,"type":"request","command":"attach","arguments":{"pid":7,"s":"é\u{1f}"}});
        let mut bytes = encode_frame(&a);
        bytes.extend(encode_frame(&b));
        let got = rt().block_on(read_all(&bytes));
        assert_eq!(got, vec![Ok(Some(a)), Ok(Some(b)), Ok(None)]);
    }

    #[test]
    fn content_length_counts_bytes_not_chars() {
        let f = encode_frame(&json!({"o":"é"}));
        let text = String::from_utf8(f).unwrap();
        assert_eq!(text, "Content-Length: 10\r\n\r\n{\"o\":\"é\"}");
    }

    #[test]
    fn connect_and_close_is_a_clean_eof() {
        assert_eq!(rt().block_on(read_all(b"")), vec![Ok(None)]);
    }

    #[test]
    fn malformed_frames_are_named_errors() {
        let cases: [(&[u8], &str); 5] = [
            (
                b"Content-Length: 5\r\n\r\n{\"a\"",
                "connection closed in the middle of a DAP frame",
            ),
            (
                b"Content-Length: 3\r\n\r\n[1]",
                "DAP frame body is not a JSON object: got an array",
            ),
            (
                b"X-Other: 1\r\n\r\n{}",
                "DAP frame has no Content-Length header; the peer does not speak DAP",
            ),
            (
                b"Content-Length: ten\r\n\r\n",
                "DAP Content-Length `ten` is not a byte count",
            ),
            (
                b"Content-Length: 99999999999\r\n\r\n",
                "DAP frame of 99999999999 bytes exceeds the 16777216-byte limit",
            ),
        ];
        for (bytes, want) in cases {
            let got = rt().block_on(read_all(bytes));
            assert_eq!(
                got.last(),
                Some(&Err(want.to_owned())),
                "input {:?}",
                String::from_utf8_lossy(bytes)
            );
        }
    }
}
