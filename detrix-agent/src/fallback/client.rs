//! A minimal DAP client for driving a spawned debugger: send a request, wait for its response
//! or for an event, remembering whether the debuggee is stopped. It speaks over any byte
//! stream: lldb-dap's stdio (a socketpair) or the TCP connection Delve dials in on.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufRead, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

use crate::dap::codec::{encode_frame, read_frame, CodecError};

/// Why talking to the debugger failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("writing to the debugger: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("the debugger closed the connection while {0}")]
    Closed(String),
    #[error("no {what} from the debugger within {secs} s")]
    Timeout { what: String, secs: u64 },
}

/// One DAP connection to a debugger.
pub struct DapClient {
    rd: Box<dyn AsyncBufRead + Unpin + Send>,
    wr: Box<dyn AsyncWrite + Unpin + Send>,
    seq: i64,
    /// Events read while waiting for something else.
    events: Vec<Value>,
    /// Responses read while waiting for an event.
    responses: Vec<Value>,
    stopped: bool,
    closed: bool,
}

impl DapClient {
    pub fn new<S: AsyncRead + AsyncWrite + Send + 'static>(stream: S) -> Self {
        let (rd, wr) = tokio::io::split(stream);
        Self {
            rd: Box::new(BufReader::new(rd)),
            wr: Box::new(wr),
            seq: 0,
            events: Vec::new(),
            responses: Vec::new(),
            stopped: false,
            closed: false,
        }
    }

    /// Whether the last execution event was a `stopped` (not followed by `continued`).
    pub fn target_stopped(&self) -> bool {
        self.stopped
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Sends a request; returns its `seq`.
    pub async fn send(&mut self, command: &str, arguments: Value) -> Result<i64, ClientError> {
        self.seq += 1;
        let mut msg = json!({"seq": self.seq, "type": "request", "command": command});
        if !arguments.is_null() {
            msg["arguments"] = arguments;
        }
        self.wr.write_all(&encode_frame(&msg)).await?;
        Ok(self.seq)
    }

    /// Sends a request and waits (30 s) for its response, which may be a failure.
    pub async fn request(&mut self, command: &str, arguments: Value) -> Result<Value, ClientError> {
        let seq = self.send(command, arguments).await?;
        self.wait_response(seq, Duration::from_secs(30)).await
    }

    async fn read(&mut self, what: &str) -> Result<Value, ClientError> {
        match read_frame(&mut self.rd).await? {
            Some(m) => {
                match m["event"].as_str() {
                    Some("stopped") => self.stopped = true,
                    Some("continued") => self.stopped = false,
                    _ => {}
                }
                Ok(m)
            }
            None => {
                self.closed = true;
                Err(ClientError::Closed(what.to_owned()))
            }
        }
    }

    pub async fn wait_response(
        &mut self,
        seq: i64,
        timeout: Duration,
    ) -> Result<Value, ClientError> {
        if let Some(i) = self.responses.iter().position(|r| r["request_seq"] == seq) {
            return Ok(self.responses.swap_remove(i));
        }
        let what = format!("waiting for the response to request {seq}");
        let fut = async {
            loop {
                let m = self.read(&what).await?;
                if m["type"] == "response" && m["request_seq"] == seq {
                    return Ok(m);
                }
                if m["type"] == "event" {
                    self.events.push(m);
                } else if m["type"] == "response" {
                    self.responses.push(m);
                }
            }
        };
        within(timeout, || format!("response to request {seq}"), fut).await
    }

    pub async fn wait_event(
        &mut self,
        pred: impl Fn(&Value) -> bool,
        timeout: Duration,
    ) -> Result<Value, ClientError> {
        if let Some(i) = self.events.iter().position(&pred) {
            return Ok(self.events.remove(i));
        }
        let fut = async {
            loop {
                let m = self.read("waiting for an event").await?;
                if m["type"] == "event" && pred(&m) {
                    return Ok(m);
                }
                if m["type"] == "response" {
                    self.responses.push(m);
                }
            }
        };
        within(timeout, || "event".into(), fut).await
    }
}

/// `fut`'s result, or [`ClientError::Timeout`] naming `what` once `timeout` has passed.
async fn within(
    timeout: Duration,
    what: impl FnOnce() -> String,
    fut: impl std::future::Future<Output = Result<Value, ClientError>>,
) -> Result<Value, ClientError> {
    tokio::time::timeout(timeout, fut)
        .await
        .unwrap_or_else(|_| {
            Err(ClientError::Timeout {
                what: what(),
                secs: timeout.as_secs(),
            })
        })
}
