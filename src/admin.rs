//! The admin listener: plain HTTP on its own thread, off the workers, serving
//! `/metrics` (Prometheus text format), `/healthz` (the process answers) and `/readyz`
//! (it should be sent traffic). One request per connection.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tracing::debug;

use crate::ingress::IngressSet;
use crate::metrics::Metrics;
use crate::proxy::drain::DrainSwitch;

/// What `/readyz` looks at.
#[derive(Debug, Clone)]
pub struct Readiness {
    /// The ingresses in force: ready once each has what it needs (see
    /// [`Ingress::not_ready`](crate::ingress::Ingress::not_ready)).
    pub ingresses: Arc<ArcSwap<IngressSet>>,
    /// Not ready once draining has started, so that load balancers move away.
    pub drain: Arc<DrainSwitch>,
}

impl Readiness {
    /// `Ok` when ready; otherwise every reason why not.
    pub fn check(&self) -> Result<(), String> {
        let mut missing = Vec::new();
        if self.drain.is_turned() {
            missing.push("draining".to_owned());
        }
        for ingress in self.ingresses.load().all() {
            missing.extend(ingress.not_ready());
        }
        match missing.is_empty() {
            true => Ok(()),
            false => Err(missing.join("; ")),
        }
    }
}

/// The most an admin request head may take.
const MAX_HEAD: usize = 8 * 1024;

/// Time allowed for a whole admin request head, and for each write of the answer.
const REQUEST_TIME: Duration = Duration::from_millis(500);

/// Admin requests served at once; more are closed at once.
const MAX_CONCURRENT: usize = 64;

/// Binds `addr` and serves admin requests on a thread of its own.
pub fn start(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    readiness: Readiness,
) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    let shared = Arc::new((metrics, readiness));
    thread::Builder::new()
        .name("edge-admin".into())
        .spawn(move || {
            let busy = Arc::new(AtomicUsize::new(0));
            for stream in listener.incoming().flatten() {
                // Each request on a thread of its own, so that a slow client cannot hold
                // up health probes; past the cap, connections are closed at once.
                if busy.fetch_add(1, Ordering::AcqRel) >= MAX_CONCURRENT {
                    busy.fetch_sub(1, Ordering::AcqRel);
                    continue;
                }
                let (shared, done) = (shared.clone(), busy.clone());
                let spawned = thread::Builder::new()
                    .name("edge-admin-request".into())
                    .spawn(move || {
                        if let Err(error) = answer(stream, &shared.0, &shared.1) {
                            debug!(%error, "admin request failed");
                        }
                        done.fetch_sub(1, Ordering::AcqRel);
                    });
                if spawned.is_err() {
                    busy.fetch_sub(1, Ordering::AcqRel);
                }
            }
        })?;
    Ok(bound)
}

fn answer(mut stream: TcpStream, metrics: &Arc<Metrics>, readiness: &Readiness) -> io::Result<()> {
    stream.set_write_timeout(Some(REQUEST_TIME))?;
    let path = read_request_path(&mut stream)?;
    let (status, content_type, body) = match path.as_deref() {
        Some("/metrics") => ("200 OK", "text/plain; version=0.0.4", metrics.render()),
        Some("/healthz") => ("200 OK", "text/plain", "ok\n".to_owned()),
        Some("/readyz") => match readiness.check() {
            Ok(()) => ("200 OK", "text/plain", "ready\n".to_owned()),
            Err(why) => (
                "503 Service Unavailable",
                "text/plain",
                format!("not ready: {why}\n"),
            ),
        },
        Some(_) => ("404 Not Found", "text/plain", "not found\n".to_owned()),
        None => ("400 Bad Request", "text/plain", "bad request\n".to_owned()),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())
}

/// The path of a `GET` request, without its query; `None` for anything else.
fn read_request_path(stream: &mut TcpStream) -> io::Result<Option<String>> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let deadline = Instant::now() + REQUEST_TIME;
    while head.len() < MAX_HEAD {
        // The whole head within the deadline, however it trickles in.
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        stream.set_read_timeout(Some(left))?;
        let read = stream.read(&mut chunk)?;
        if read == 0 {
            break;
        }
        head.extend_from_slice(&chunk[..read]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(&head) {
            Ok(httparse::Status::Complete(_)) => {
                let is_get = request.method == Some("GET");
                let path = request
                    .path
                    .map(|p| p.split('?').next().unwrap_or(p).to_owned());
                return Ok(path.filter(|_| is_get));
            }
            Ok(httparse::Status::Partial) => continue,
            Err(_) => return Ok(None),
        }
    }
    Ok(None)
}
