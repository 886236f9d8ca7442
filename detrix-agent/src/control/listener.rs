//! The control plane's accept policy (issue #12 point 5): at most [`MAX_CONNECTIONS`] open at
//! once (more are closed at accept and counted), and each must get its answer within
//! [`ANSWER_TIMEOUT`] of connecting or of its previous answer, or it is closed.
//!
//! Why the timer restarts only when the agent writes: a slowloris peer trickling one header
//! byte at a time would keep a read-based idle timer alive forever; it cannot make the agent
//! answer. The longest handler (a wake: health check + registration) is far shorter.

use std::future::Future as _;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// Most control-plane connections open at once.
pub const MAX_CONNECTIONS: usize = 64;

/// How long a connection may go without an answer from the agent.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// A TCP listener that applies the policy; serve it with `axum::serve`.
#[derive(Debug)]
pub struct Capped {
    inner: TcpListener,
    slots: Arc<Semaphore>,
    refused: u64,
}

impl Capped {
    #[must_use]
    pub fn new(inner: TcpListener) -> Self {
        Self {
            inner,
            slots: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
            refused: 0,
        }
    }
}

impl axum::serve::Listener for Capped {
    type Io = Guarded;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Guarded, SocketAddr) {
        loop {
            let (io, peer) = match self.inner.accept().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a control-plane connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            match self.slots.clone().try_acquire_owned() {
                Ok(permit) => {
                    return (
                        Guarded {
                            io,
                            _permit: permit,
                            deadline: Box::pin(tokio::time::sleep(ANSWER_TIMEOUT)),
                        },
                        peer,
                    )
                }
                Err(_) => {
                    self.refused += 1;
                    if self.refused.is_power_of_two() {
                        tracing::warn!(%peer, refused = self.refused, "control-plane connection refused: {MAX_CONNECTIONS} are already open (MAX_CONNECTIONS)");
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// One admitted connection: holds its slot and its answer deadline.
#[derive(Debug)]
pub struct Guarded {
    io: TcpStream,
    _permit: OwnedSemaphorePermit,
    deadline: Pin<Box<Sleep>>,
}

impl Guarded {
    /// The local end, to find the peer's socket in `/proc/net/tcp`.
    ///
    /// # Errors
    /// As [`TcpStream::local_addr`].
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.local_addr()
    }

    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.deadline.as_mut().poll(cx).is_ready()
    }
}

fn timed_out() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!(
            "control-plane connection closed: no answer was due within {} s",
            ANSWER_TIMEOUT.as_secs()
        ),
    )
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.io).poll_read(cx, buf) {
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(timed_out())),
            other => other,
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.io).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    let next = Instant::now() + ANSWER_TIMEOUT;
                    self.deadline.as_mut().reset(next);
                }
                Poll::Ready(Ok(n))
            }
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(timed_out())),
            other => other,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
