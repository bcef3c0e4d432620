//! Sockets: listener setup (`SO_REUSEPORT`, one per worker and address) and sending a
//! whole owned buffer with cancellation, which monoio's `write_all` does not offer.

use std::io;
use std::net::{SocketAddr, TcpListener};

use monoio::buf::IoBuf;
use monoio::io::{CancelHandle, CancelableAsyncWriteRent};
use socket2::{Domain, Protocol, Socket, Type};

/// Listen backlog asked for every listener; the kernel caps it at `net.core.somaxconn`.
/// Connections wait there while a worker is at its handshake cap.
const BACKLOG: i32 = 65535;

/// Binds a non-blocking listener with `SO_REUSEPORT`, so that each worker can bind the
/// same address and the kernel spreads connections across them. IPv6 sockets are
/// IPv6-only, so that `0.0.0.0:p` and `[::]:p` can be listed side by side.
pub fn bind_reuseport(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// Checks that no other socket listens on `addr`, and returns it with a port 0 resolved.
/// Every worker binds with `SO_REUSEPORT`, which would also let a second process (an
/// old instance with an old CRL, say) silently share the port; a plain bind first
/// makes that an "address in use" error instead.
pub fn claim(addr: SocketAddr) -> io::Result<SocketAddr> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    let bound = socket.local_addr()?;
    bound
        .as_socket()
        .ok_or_else(|| io::Error::other("not an IP socket"))
}

/// Writes all of `buffer`, or fails; the buffer comes back either way.
pub async fn send_all<W: CancelableAsyncWriteRent>(
    writer: &mut W,
    mut buffer: Vec<u8>,
    cancel: &CancelHandle,
) -> (io::Result<()>, Vec<u8>) {
    let mut sent = 0;
    while sent < buffer.len() {
        let (result, slice) = writer
            .cancelable_write(buffer.slice(sent..), cancel.clone())
            .await;
        buffer = slice.into_inner();
        match result {
            Ok(0) => return (Err(io::ErrorKind::WriteZero.into()), buffer),
            Ok(written) => sent += written,
            Err(error) => return (Err(error), buffer),
        }
    }
    (Ok(()), buffer)
}
