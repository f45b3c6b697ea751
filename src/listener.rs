//! TCP listeners that hand over connections ready to use: plain, or TLS once the
//! handshake has finished in the connection's own task within a time limit. A client that
//! opens a connection and never completes its handshake therefore holds up no one else.
//! Each listener holds at most its limit of connections open; one over it is closed at once
//! (and counted in a throttled warning) rather than left waiting on the kernel's backlog.
//! Serves the page (axum), the broker's WebSocket listener and its MQTT-over-TLS listener.
//! It must never read or write application data itself.

use crate::tls::ServerTls;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::either::Either;

/// How long a client gets to complete its TLS handshake.
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(10);
/// Connections handshaken but not yet taken by the server.
const READY_QUEUE: usize = 64;

/// A connection: plain TCP, or TLS over TCP. It holds its place under its listener's
/// connection limit until dropped.
pub struct Conn {
    io: Either<TcpStream, tokio_rustls::server::TlsStream<TcpStream>>,
    _place: OwnedSemaphorePermit,
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Accepted connections, in the order their handshakes finished. Dropping it stops
/// accepting.
pub struct Incoming {
    ready: mpsc::Receiver<(Conn, SocketAddr)>,
    local: SocketAddr,
    accepting: tokio::task::JoinHandle<()>,
}

impl Drop for Incoming {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

impl Incoming {
    /// Binds `addr` (the error names `key`, the configuration key it came from) and starts
    /// accepting, holding at most `max_connections` open (handshaking or handed over); with
    /// `tls`, each connection's handshake runs in a task of its own.
    pub async fn bind(
        addr: SocketAddr,
        key: &'static str,
        tls: Option<ServerTls>,
        max_connections: usize,
    ) -> anyhow::Result<Incoming> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("{key}: cannot listen on {addr}: {e}"))?;
        let local = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(READY_QUEUE);
        let places = Arc::new(Semaphore::new(max_connections));
        let accepting = tokio::spawn(accept_loop(listener, key, tls, places, tx));
        Ok(Incoming {
            ready,
            local,
            accepting,
        })
    }

    /// The next ready connection; `None` once accepting stopped.
    pub async fn next(&mut self) -> Option<(Conn, SocketAddr)> {
        self.ready.recv().await
    }
}

async fn accept_loop(
    listener: TcpListener,
    key: &'static str,
    tls: Option<ServerTls>,
    places: Arc<Semaphore>,
    ready: mpsc::Sender<(Conn, SocketAddr)>,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::debug!("accept failed: {err}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(place) = Arc::clone(&places).try_acquire_owned() else {
            // Closing it at once tells the client; the places free as others close.
            crate::warn_throttled!(%peer, "{key}: connection limit reached; closing a new connection");
            continue;
        };
        let _ = stream.set_nodelay(true);
        match &tls {
            None => {
                let conn = Conn {
                    io: Either::Left(stream),
                    _place: place,
                };
                if ready.send((conn, peer)).await.is_err() {
                    return;
                }
            }
            Some(tls) => {
                let acceptor = tls.acceptor().clone();
                let ready = ready.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_LIMIT, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            let conn = Conn {
                                io: Either::Right(stream),
                                _place: place,
                            };
                            let _ = ready.send((conn, peer)).await;
                        }
                        Ok(Err(err)) => tracing::debug!(%peer, "TLS handshake failed: {err}"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        }
    }
}

impl axum::serve::Listener for Incoming {
    type Io = Conn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Conn, SocketAddr) {
        match self.next().await {
            Some(accepted) => accepted,
            // The accept loop only ends when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}
