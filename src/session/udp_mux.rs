//! The ICE UDP mux (`webrtc.udp_port`): one UDP socket per local interface address at a
//! fixed port, shared by every viewer's connection, so an admin forwards a single port.
//! [`Routes`] decides which connection a datagram belongs to; [`UdpMux`] is the thin socket
//! adapter that hands each connection its own [`AsyncUdpSocket`] view of the shared sockets.
//!
//! It must never deliver a datagram to a connection that did not ask for it: a STUN request
//! goes by the ICE ufrag it names (the connection then checks its integrity), a STUN response
//! by the transaction id the connection sent, and anything else only to the connection that
//! itself sent to that address. It never parses media.

use bytes::Bytes;
use rtc::shared::ifaces::ifaces;
use rtc::stun::attributes::ATTR_USERNAME;
use rtc::stun::message::{Message, CLASS_ERROR_RESPONSE, CLASS_REQUEST, CLASS_SUCCESS_RESPONSE};
use rtc::stun::textattrs::TextAttribute;
use std::collections::HashMap;
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use webrtc::runtime::{AsyncUdpSocket, RecvMeta, Transmit};

/// Identifies one peer connection among those sharing the mux.
pub type ConnectionId = u64;

/// A STUN transaction is over long before this (RFC 8489 retransmits for under 40 s).
const TRANSACTION_LIFETIME: Duration = Duration::from_secs(40);
/// Bounds the transaction table; pruned of stale entries when it reaches this.
const MAX_TRANSACTIONS: usize = 4096;
/// Datagrams waiting for a connection's driver; beyond this they are dropped, as UDP may.
const INBOX_DATAGRAMS: usize = 256;
/// Larger than any datagram ICE, DTLS or SRTP sends on a 1500-byte path.
const MAX_DATAGRAM: usize = 2048;
const STUN_MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];

/// What a datagram is, as far as routing cares.
enum Kind {
    /// A STUN request or indication, with the USERNAME it carries (if any).
    StunRequest(Option<String>),
    StunResponse([u8; 12]),
    Other,
}

fn classify(datagram: &[u8]) -> Kind {
    // STUN: first two bits zero and the magic cookie (RFC 8489 §5); DTLS, RTP and RTCP
    // start with 20–63 and 128–191, so the first byte alone rules them out cheaply.
    if datagram.len() < 20 || datagram[0] > 3 || datagram[4..8] != STUN_MAGIC_COOKIE {
        return Kind::Other;
    }
    let mut message = Message::new();
    if message.unmarshal_binary(datagram).is_err() {
        return Kind::Other;
    }
    let class = message.typ.class;
    if class == CLASS_SUCCESS_RESPONSE || class == CLASS_ERROR_RESPONSE {
        Kind::StunResponse(message.transaction_id.0)
    } else {
        let username = TextAttribute::get_from_as(&message, ATTR_USERNAME)
            .ok()
            .map(|attribute| attribute.text);
        if class == CLASS_REQUEST {
            Kind::StunRequest(username)
        } else {
            Kind::StunRequest(None)
        }
    }
}

/// The mux's routing decisions, driven by what each connection sends and what arrives.
#[derive(Default)]
pub struct Routes {
    /// Local ICE ufrag → connection: where a peer's connectivity checks go.
    by_ufrag: HashMap<String, ConnectionId>,
    /// Remote address → the connection that last sent to it: where DTLS, SRTP and the rest go.
    by_peer: HashMap<SocketAddr, ConnectionId>,
    /// Transactions of STUN requests a connection sent (its checks, its STUN server queries).
    by_transaction: HashMap<[u8; 12], (ConnectionId, Instant)>,
}

impl Routes {
    /// Records that `connection` sent `datagram` to `to`.
    pub fn learn_sent(
        &mut self,
        connection: ConnectionId,
        to: SocketAddr,
        datagram: &[u8],
        now: Instant,
    ) {
        // Every media packet passes here: write only when the address changes hands.
        if self.by_peer.get(&to) != Some(&connection) {
            self.by_peer.insert(to, connection);
        }
        if datagram.len() < 20 || datagram[0] > 3 || datagram[4..8] != STUN_MAGIC_COOKIE {
            return;
        }
        let mut message = Message::new();
        if message.unmarshal_binary(datagram).is_err() || message.typ.class != CLASS_REQUEST {
            return;
        }
        if self.by_transaction.len() >= MAX_TRANSACTIONS {
            self.by_transaction
                .retain(|_, (_, sent)| now.duration_since(*sent) < TRANSACTION_LIFETIME);
        }
        if self.by_transaction.len() < MAX_TRANSACTIONS {
            self.by_transaction
                .insert(message.transaction_id.0, (connection, now));
        }
        // A check we send names "their-ufrag:our-ufrag": ours routes their checks to us.
        if let Ok(username) = TextAttribute::get_from_as(&message, ATTR_USERNAME) {
            if let Some((_, local)) = username.text.split_once(':') {
                self.register_ufrag(connection, local);
            }
        }
    }

    /// Which connection a datagram from `from` belongs to, if any.
    pub fn route(&mut self, from: SocketAddr, datagram: &[u8]) -> Option<ConnectionId> {
        match classify(datagram) {
            // A check names "our-ufrag:their-ufrag".
            Kind::StunRequest(Some(username)) => {
                let local = username
                    .split_once(':')
                    .map_or(username.as_str(), |(l, _)| l);
                self.by_ufrag.get(local).copied()
            }
            Kind::StunRequest(None) | Kind::Other => self.by_peer.get(&from).copied(),
            Kind::StunResponse(transaction) => self
                .by_transaction
                .remove(&transaction)
                .map(|(connection, _)| connection),
        }
    }

    /// Makes checks naming `ufrag` reach `connection` (from its local description).
    pub fn register_ufrag(&mut self, connection: ConnectionId, ufrag: &str) {
        if !ufrag.is_empty() && !self.by_ufrag.contains_key(ufrag) {
            self.by_ufrag.insert(ufrag.to_owned(), connection);
        }
    }

    /// Drops everything that routes to `connection` (it has closed).
    pub fn forget(&mut self, connection: ConnectionId) {
        self.by_ufrag.retain(|_, c| *c != connection);
        self.by_peer.retain(|_, c| *c != connection);
        self.by_transaction.retain(|_, (c, _)| *c != connection);
    }
}

type Inbox = mpsc::Sender<(SocketAddr, Bytes)>;

/// State shared by the mux, its receive tasks and every connection's sockets.
#[derive(Default)]
struct Shared {
    routes: Mutex<Routes>,
    /// (connection, local address) → that connection's socket on that interface.
    inboxes: Mutex<HashMap<(ConnectionId, SocketAddr), Inbox>>,
}

/// One bound interface socket and the task that routes what arrives on it.
struct Interface {
    socket: Arc<UdpSocket>,
    receiver: tokio::task::JoinHandle<()>,
}

impl Drop for Interface {
    fn drop(&mut self) {
        self.receiver.abort();
    }
}

/// The shared sockets at `webrtc.udp_port`.
pub struct UdpMux {
    port: u16,
    /// As configured: concrete addresses are bound as given, wildcards per interface.
    bind_ips: Vec<IpAddr>,
    interfaces: Mutex<HashMap<SocketAddr, Interface>>,
    shared: Arc<Shared>,
    next_connection: AtomicU64,
}

impl UdpMux {
    /// Binds `port` on each address of `bind_ips` (a wildcard meaning every non-loopback
    /// interface). Fails if the port cannot be bound anywhere.
    /// Call within a tokio runtime: each socket gets a receive task.
    pub fn bind(bind_ips: Vec<IpAddr>, port: u16) -> io::Result<UdpMux> {
        let mux = UdpMux {
            port,
            bind_ips,
            interfaces: Mutex::new(HashMap::new()),
            shared: Arc::default(),
            next_connection: AtomicU64::new(1),
        };
        mux.bind_new_interfaces()?;
        if mux.interfaces.lock().unwrap().is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::AddrNotAvailable,
                format!("no interface address to bind UDP port {port} on"),
            ));
        }
        Ok(mux)
    }

    /// The addresses the mux listens on.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        let mut addrs: Vec<_> = self.interfaces.lock().unwrap().keys().copied().collect();
        addrs.sort();
        addrs
    }

    /// Binds interface addresses that appeared since the last call (DHCP, a late Wi-Fi);
    /// an address already bound stays as it is.
    fn bind_new_interfaces(&self) -> io::Result<()> {
        let mut wanted = Vec::new();
        for ip in &self.bind_ips {
            if ip.is_unspecified() {
                for interface in ifaces()? {
                    let Some(addr) = interface.addr else { continue };
                    let ip_here = addr.ip();
                    if ip_here.is_ipv4() == ip.is_ipv4()
                        && !ip_here.is_loopback()
                        && !is_link_local(&ip_here)
                    {
                        wanted.push(SocketAddr::new(ip_here, self.port));
                    }
                }
            } else {
                wanted.push(SocketAddr::new(*ip, self.port));
            }
        }
        let mut interfaces = self.interfaces.lock().unwrap();
        let mut first_error = None;
        for addr in wanted {
            if interfaces.contains_key(&addr) {
                continue;
            }
            match bind_interface(addr, Arc::clone(&self.shared)) {
                Ok(interface) => {
                    tracing::info!(%addr, "ICE UDP mux listening");
                    interfaces.insert(addr, interface);
                }
                Err(err) => {
                    tracing::warn!(%addr, "ICE UDP mux cannot bind: {err}");
                    first_error
                        .get_or_insert(io::Error::new(err.kind(), format!("UDP {addr}: {err}")));
                }
            }
        }
        match first_error {
            Some(err) if interfaces.is_empty() => Err(err),
            _ => Ok(()),
        }
    }

    /// One socket per interface for a new connection, and its id for [`register_ufrag`].
    ///
    /// [`register_ufrag`]: UdpMux::register_ufrag
    pub fn connection_sockets(&self) -> (ConnectionId, Vec<Arc<dyn AsyncUdpSocket>>) {
        if let Err(err) = self.bind_new_interfaces() {
            tracing::warn!("ICE UDP mux: {err}");
        }
        let connection = self.next_connection.fetch_add(1, Ordering::Relaxed);
        let interfaces = self.interfaces.lock().unwrap();
        let mut inboxes = self.shared.inboxes.lock().unwrap();
        let sockets = interfaces
            .iter()
            .map(|(local, interface)| {
                let (inbox, datagrams) = mpsc::channel(INBOX_DATAGRAMS);
                inboxes.insert((connection, *local), inbox);
                Arc::new(MuxedSocket {
                    connection,
                    local: *local,
                    socket: Arc::clone(&interface.socket),
                    datagrams: Mutex::new(datagrams),
                    shared: Arc::clone(&self.shared),
                }) as Arc<dyn AsyncUdpSocket>
            })
            .collect();
        (connection, sockets)
    }

    /// Routes checks naming `ufrag` to `connection` before it has sent any of its own.
    pub fn register_ufrag(&self, connection: ConnectionId, ufrag: &str) {
        self.shared
            .routes
            .lock()
            .unwrap()
            .register_ufrag(connection, ufrag);
    }
}

fn is_link_local(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => ip.is_link_local(),
        IpAddr::V6(ip) => (ip.segments()[0] & 0xffc0) == 0xfe80,
    }
}

fn bind_interface(addr: SocketAddr, shared: Arc<Shared>) -> io::Result<Interface> {
    let socket = std::net::UdpSocket::bind(addr)?;
    socket.set_nonblocking(true)?;
    let socket = Arc::new(UdpSocket::from_std(socket)?);
    let receiver = tokio::spawn(receive(Arc::clone(&socket), addr, shared));
    Ok(Interface { socket, receiver })
}

/// Routes every datagram arriving on one interface socket to its connection's inbox.
async fn receive(socket: Arc<UdpSocket>, local: SocketAddr, shared: Arc<Shared>) {
    let mut buffer = vec![0u8; MAX_DATAGRAM];
    loop {
        let (len, from) = match socket.recv_from(&mut buffer).await {
            Ok(received) => received,
            // ICMP errors surface here for whichever peer caused them; the socket is fine.
            Err(err) if is_transient(&err) => continue,
            Err(err) => {
                crate::warn_throttled!(%local, "ICE UDP mux receive: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let datagram = &buffer[..len];
        let Some(connection) = shared.routes.lock().unwrap().route(from, datagram) else {
            tracing::trace!(%from, len, "ICE UDP mux: datagram for no connection");
            continue;
        };
        let inbox = shared
            .inboxes
            .lock()
            .unwrap()
            .get(&(connection, local))
            .cloned();
        if let Some(inbox) = inbox {
            // Full means the driver is behind: drop it, as the network would.
            let _ = inbox.try_send((from, Bytes::copy_from_slice(datagram)));
        }
    }
}

fn is_transient(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
            | io::ErrorKind::TimedOut
    )
}

/// One connection's view of one shared interface socket.
struct MuxedSocket {
    connection: ConnectionId,
    local: SocketAddr,
    socket: Arc<UdpSocket>,
    datagrams: Mutex<mpsc::Receiver<(SocketAddr, Bytes)>>,
    shared: Arc<Shared>,
}

impl fmt::Debug for MuxedSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MuxedSocket")
            .field("connection", &self.connection)
            .field("local", &self.local)
            .finish()
    }
}

impl Drop for MuxedSocket {
    fn drop(&mut self) {
        self.shared
            .inboxes
            .lock()
            .unwrap()
            .remove(&(self.connection, self.local));
        self.shared.routes.lock().unwrap().forget(self.connection);
    }
}

impl AsyncUdpSocket for MuxedSocket {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }

    fn poll_send(&self, cx: &mut Context<'_>, transmit: &Transmit<'_>) -> Poll<io::Result<usize>> {
        let sent = self
            .socket
            .poll_send_to(cx, transmit.contents, transmit.destination);
        if let Poll::Ready(Ok(_)) = sent {
            self.shared.routes.lock().unwrap().learn_sent(
                self.connection,
                transmit.destination,
                transmit.contents,
                Instant::now(),
            );
        }
        sent
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let mut datagrams = self.datagrams.lock().unwrap();
        let mut filled = 0;
        while filled < bufs.len().min(meta.len()) {
            let next = if filled == 0 {
                match datagrams.poll_recv(cx) {
                    Poll::Ready(next) => next,
                    Poll::Pending => return Poll::Pending,
                }
            } else {
                match datagrams.try_recv() {
                    Ok(next) => Some(next),
                    Err(_) => break,
                }
            };
            let Some((from, datagram)) = next else {
                return Poll::Ready(Err(io::Error::other("ICE UDP mux closed")));
            };
            let len = datagram.len().min(bufs[filled].len());
            bufs[filled][..len].copy_from_slice(&datagram[..len]);
            let mut received = RecvMeta::default();
            received.addr = from;
            received.len = len;
            received.stride = len.max(1);
            received.dst_ip = Some(self.local.ip());
            meta[filled] = received;
            filled += 1;
        }
        Poll::Ready(Ok(filled))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::stun::message::{MessageType, BINDING_REQUEST, BINDING_SUCCESS};
    use rtc::stun::message::{Setter, TransactionId};

    fn stun(typ: MessageType, transaction: [u8; 12], username: Option<&str>) -> Vec<u8> {
        let mut message = Message::new();
        message.typ = typ;
        message.transaction_id = TransactionId(transaction);
        message.write_header();
        if let Some(username) = username {
            TextAttribute::new(ATTR_USERNAME, username.to_owned())
                .add_to(&mut message)
                .unwrap();
        }
        message.raw
    }

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    const DTLS_RECORD: &[u8] = &[22, 254, 253, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0];

    #[test]
    fn a_check_goes_to_the_connection_whose_ufrag_it_names() {
        let mut routes = Routes::default();
        routes.register_ufrag(1, "camA");
        routes.register_ufrag(2, "camB");
        let viewer = addr("198.51.100.20:40000");
        let check = stun(BINDING_REQUEST, [7; 12], Some("camB:viewer"));
        assert_eq!(routes.route(viewer, &check), Some(2));
        let unknown = stun(BINDING_REQUEST, [8; 12], Some("nobody:viewer"));
        assert_eq!(routes.route(viewer, &unknown), None);
    }

    #[test]
    fn media_goes_only_to_the_connection_that_sent_to_that_address() {
        let mut routes = Routes::default();
        let now = Instant::now();
        let viewer_a = addr("198.51.100.20:40000");
        let viewer_b = addr("198.51.100.20:40001");
        assert_eq!(
            routes.route(viewer_a, DTLS_RECORD),
            None,
            "nobody asked yet"
        );
        routes.learn_sent(1, viewer_a, DTLS_RECORD, now);
        routes.learn_sent(2, viewer_b, DTLS_RECORD, now);
        assert_eq!(routes.route(viewer_a, DTLS_RECORD), Some(1));
        assert_eq!(routes.route(viewer_b, DTLS_RECORD), Some(2));
    }

    #[test]
    fn a_response_goes_to_the_connection_that_sent_the_request_once() {
        let mut routes = Routes::default();
        let now = Instant::now();
        let stun_server = addr("198.51.100.1:3478");
        // Both connections query the same STUN server from the same shared socket.
        routes.learn_sent(1, stun_server, &stun(BINDING_REQUEST, [1; 12], None), now);
        routes.learn_sent(2, stun_server, &stun(BINDING_REQUEST, [2; 12], None), now);
        let answer_for_1 = stun(BINDING_SUCCESS, [1; 12], None);
        assert_eq!(routes.route(stun_server, &answer_for_1), Some(1));
        let answer_for_2 = stun(BINDING_SUCCESS, [2; 12], None);
        assert_eq!(routes.route(stun_server, &answer_for_2), Some(2));
        assert_eq!(
            routes.route(stun_server, &answer_for_1),
            None,
            "a replayed response has no transaction left"
        );
    }

    #[test]
    fn our_own_check_teaches_the_ufrag_that_their_checks_will_name() {
        let mut routes = Routes::default();
        let viewer = addr("198.51.100.20:40000");
        routes.learn_sent(
            3,
            viewer,
            &stun(BINDING_REQUEST, [3; 12], Some("viewer:cam3")),
            Instant::now(),
        );
        let check = stun(BINDING_REQUEST, [4; 12], Some("cam3:viewer"));
        assert_eq!(routes.route(addr("203.0.113.9:5000"), &check), Some(3));
    }

    #[test]
    fn a_registered_ufrag_is_not_taken_over_by_another_connection() {
        let mut routes = Routes::default();
        routes.register_ufrag(1, "camA");
        routes.register_ufrag(2, "camA");
        let check = stun(BINDING_REQUEST, [5; 12], Some("camA:viewer"));
        assert_eq!(routes.route(addr("198.51.100.20:1"), &check), Some(1));
    }

    #[test]
    fn a_closed_connection_leaves_no_routes() {
        let mut routes = Routes::default();
        let now = Instant::now();
        routes.register_ufrag(1, "camA");
        routes.learn_sent(
            1,
            addr("198.51.100.20:1"),
            &stun(BINDING_REQUEST, [9; 12], None),
            now,
        );
        routes.register_ufrag(2, "camB");
        routes.forget(1);
        assert!(routes.by_peer.is_empty() && routes.by_transaction.is_empty());
        assert_eq!(
            routes.by_ufrag.len(),
            1,
            "only connection 2's ufrag remains"
        );
    }

    #[test]
    fn stale_transactions_are_pruned_when_the_table_is_full() {
        let mut routes = Routes::default();
        let start = Instant::now();
        let server = addr("198.51.100.1:3478");
        for i in 0..MAX_TRANSACTIONS as u32 {
            let mut id = [0u8; 12];
            id[..4].copy_from_slice(&i.to_be_bytes());
            routes.learn_sent(1, server, &stun(BINDING_REQUEST, id, None), start);
        }
        let later = start + TRANSACTION_LIFETIME + Duration::from_secs(1);
        routes.learn_sent(1, server, &stun(BINDING_REQUEST, [0xff; 12], None), later);
        assert_eq!(routes.by_transaction.len(), 1);
        let response = stun(BINDING_SUCCESS, [0xff; 12], None);
        assert_eq!(routes.route(server, &response), Some(1));
    }

    #[test]
    fn garbage_is_routed_by_address_only_and_never_panics() {
        let mut routes = Routes::default();
        let from = addr("198.51.100.20:1");
        let junk = [
            &[][..],
            &[0u8; 19][..],
            &[
                0, 1, 0, 4, 0x21, 0x12, 0xa4, 0x42, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ][..],
            &[
                1, 1, 0xff, 0xff, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
            ][..],
        ];
        for junk in junk {
            assert_eq!(routes.route(from, junk), None);
        }
        for junk in junk {
            routes.learn_sent(1, from, junk, Instant::now());
        }
        for junk in junk {
            assert_eq!(routes.route(from, junk), Some(1), "{junk:?}");
        }
        assert!(routes.by_transaction.is_empty() && routes.by_ufrag.is_empty());
    }
}
