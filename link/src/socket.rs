//! UDP sockets for quinn with buffers large enough not to drop packets at
//! speed (the kernel default of ~208 KiB loses packets even on loopback).

use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

use crate::LinkError;

/// Requested send and receive buffer size.
pub const SOCKET_BUFFER_BYTES: usize = 8 * 1024 * 1024;

/// Binds a UDP socket with raised buffers. The kernel caps the request at
/// `net.core.rmem_max`/`wmem_max`; when it does, a warning names the sysctl.
pub fn bind_udp(addr: SocketAddr) -> Result<std::net::UdpSocket, LinkError> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
        .map_err(LinkError::Socket)?;
    if addr.is_ipv6() {
        // Accept IPv4-mapped traffic too, so "[::]:port" serves both.
        let _ = socket.set_only_v6(false);
    }
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER_BYTES);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER_BYTES);
    let rcv = socket.recv_buffer_size().unwrap_or(0);
    let snd = socket.send_buffer_size().unwrap_or(0);
    // Linux reports twice the usable size.
    if rcv < SOCKET_BUFFER_BYTES || snd < SOCKET_BUFFER_BYTES {
        tracing::warn!(
            receive_buffer = rcv,
            send_buffer = snd,
            wanted = SOCKET_BUFFER_BYTES,
            "UDP socket buffers are capped by the kernel; raise net.core.rmem_max and net.core.wmem_max \
             to at least {SOCKET_BUFFER_BYTES} for full link speed"
        );
    }
    socket.set_nonblocking(true).map_err(LinkError::Socket)?;
    socket.bind(&addr.into()).map_err(LinkError::Socket)?;
    Ok(socket.into())
}
