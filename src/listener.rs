//! TCP listeners that hand over connections ready to use: plain, or TLS once the
//! handshake has finished in the connection's own task within a time limit. A client that
//! opens a connection and never completes its handshake therefore holds up no one else.
//! Serves the page (axum), the broker's WebSocket listener and its MQTT-over-TLS listener.
//! It must never read or write application data itself.

use crate::tls::ServerTls;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::either::Either;

/// How long a client gets to complete its TLS handshake.
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(10);
/// Connections handshaken but not yet taken by the server.
const READY_QUEUE: usize = 64;

/// A connection: plain TCP, or TLS over TCP.
pub type Conn = Either<TcpStream, tokio_rustls::server::TlsStream<TcpStream>>;

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
    /// accepting; with `tls`, each connection's handshake runs in a task of its own.
    pub async fn bind(
        addr: SocketAddr,
        key: &'static str,
        tls: Option<ServerTls>,
    ) -> anyhow::Result<Incoming> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("{key}: cannot listen on {addr}: {e}"))?;
        let local = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(READY_QUEUE);
        let accepting = tokio::spawn(accept_loop(listener, tls, tx));
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
    tls: Option<ServerTls>,
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
        let _ = stream.set_nodelay(true);
        match &tls {
            None => {
                if ready.send((Either::Left(stream), peer)).await.is_err() {
                    return;
                }
            }
            Some(tls) => {
                let acceptor = tls.acceptor().clone();
                let ready = ready.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_LIMIT, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            let _ = ready.send((Either::Right(stream), peer)).await;
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
