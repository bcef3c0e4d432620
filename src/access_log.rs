//! The access log: one line per request and one per refused connection. Workers format
//! a line and hand it to a writer thread over a bounded queue, so that a slow disk never
//! stalls a worker; when the queue is full the line is dropped and counted. A file is
//! reopened on SIGHUP, after log rotation has moved it. Tokens and keys are never
//! logged: only the token's `sub` and `iss`.

use std::borrow::Cow;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use tracing::warn;

use crate::config::{AccessLogConfig, AccessLogFormat};

/// Lines waiting for the writer; beyond this, lines are dropped.
const QUEUE: usize = 64 * 1024;

/// How long the writer waits for a line before looking at the reopen flag.
const WAKE: Duration = Duration::from_millis(250);

static REOPEN: AtomicBool = AtomicBool::new(false);

/// Asks the writer to reopen its file (what SIGHUP does).
pub fn request_reopen() {
    REOPEN.store(true, Ordering::Release);
}

/// A running access log.
#[derive(Debug)]
pub struct AccessLog {
    lines: SyncSender<String>,
    format: AccessLogFormat,
    include_query: bool,
    dropped: AtomicU64,
}

/// One request as the log shows it, filled in as the request goes.
#[derive(Debug, Clone)]
pub struct RequestEntry {
    /// The method.
    pub method: String,
    /// The path, without the query unless the log keeps queries.
    pub path: String,
    /// The token's `sub` and `iss`, when a token was accepted.
    pub user: Option<(Option<String>, Option<String>)>,
    /// When the request head was complete.
    pub received: Instant,
    /// How long its authorization took.
    pub authorization: Duration,
    /// Bytes of the request received: its head, then its body as it is forwarded.
    pub bytes_in: u64,
}

/// Who the connection belongs to, for every line it logs.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionFacts<'a> {
    /// The client's address.
    pub client: SocketAddr,
    /// The SNI it sent.
    pub sni: Option<&'a str>,
    /// The verified device's subject and SHA-256 fingerprint.
    pub device: Option<(&'a str, &'a str)>,
}

/// `value` with every character that could end a line or disguise the text around it
/// (control characters, Unicode line separators, bidirectional overrides) written as a
/// `\u{…}` escape.
fn clean(value: &str) -> Cow<'_, str> {
    let hidden = |c: char| {
        c.is_control()
            || matches!(c, '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}')
            || ('\u{202a}'..='\u{202e}').contains(&c)
            || ('\u{2066}'..='\u{2069}').contains(&c)
    };
    if !value.chars().any(hidden) {
        return Cow::Borrowed(value);
    }
    let mut cleaned = String::with_capacity(value.len() + 8);
    for c in value.chars() {
        match hidden(c) {
            true => cleaned.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
            false => cleaned.push(c),
        }
    }
    Cow::Owned(cleaned)
}

#[derive(Serialize)]
struct RequestLine<'a> {
    time: String,
    event: &'static str,
    client: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    sni: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cert_subject: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cert_sha256: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sub: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<Cow<'a, str>>,
    method: &'a str,
    path: &'a str,
    status: u16,
    bytes_in: u64,
    bytes_out: u64,
    auth_ms: f64,
    duration_ms: f64,
}

#[derive(Serialize)]
struct RefusalLine<'a> {
    time: String,
    event: &'static str,
    client: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    sni: Option<Cow<'a, str>>,
    reason: &'a str,
}

impl AccessLog {
    /// Opens the destination and starts the writer thread.
    pub fn start(config: &AccessLogConfig) -> io::Result<Arc<Self>> {
        let destination = Destination::open(&config.path)?;
        let (lines, queue) = mpsc::sync_channel(QUEUE);
        thread::Builder::new()
            .name("edge-access-log".into())
            .spawn(move || write_lines(destination, &queue))?;
        Ok(Arc::new(Self {
            lines,
            format: config.format,
            include_query: config.include_query,
            dropped: AtomicU64::new(0),
        }))
    }

    /// The path of a request target as logged.
    pub fn path_of<'a>(&self, target: &'a str) -> &'a str {
        match self.include_query {
            true => target,
            false => target.split('?').next().unwrap_or(target),
        }
    }

    /// Logs a request with the status and bytes its response ended with.
    pub fn request(
        &self,
        connection: ConnectionFacts<'_>,
        entry: &RequestEntry,
        status: u16,
        bytes_out: u64,
    ) {
        let (sub, iss) = match &entry.user {
            Some((sub, iss)) => (sub.as_deref(), iss.as_deref()),
            None => (None, None),
        };
        let line = RequestLine {
            time: now(),
            event: "request",
            client: connection.client.to_string(),
            sni: connection.sni.map(clean),
            cert_subject: connection.device.map(|(subject, _)| clean(subject)),
            cert_sha256: connection.device.map(|(_, fingerprint)| fingerprint),
            sub: sub.map(clean),
            iss: iss.map(clean),
            method: &entry.method,
            path: &entry.path,
            status,
            bytes_in: entry.bytes_in,
            bytes_out,
            auth_ms: millis(entry.authorization),
            duration_ms: millis(entry.received.elapsed()),
        };
        let text = match self.format {
            AccessLogFormat::Json => serde_json::to_string(&line).unwrap_or_default(),
            AccessLogFormat::Text => line.text(),
        };
        self.send(text);
    }

    /// Logs a connection refused before any request: a failed handshake, or a cap.
    pub fn refused(&self, client: SocketAddr, sni: Option<&str>, reason: &str) {
        let line = RefusalLine {
            time: now(),
            event: "refused",
            client: client.to_string(),
            sni: sni.map(clean),
            reason,
        };
        let text = match self.format {
            AccessLogFormat::Json => serde_json::to_string(&line).unwrap_or_default(),
            AccessLogFormat::Text => line.text(),
        };
        self.send(text);
    }

    /// Lines dropped because the writer fell behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn send(&self, line: String) {
        match self.lines.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

fn millis(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1e6).round() / 1e3
}

/// A text line: the time, then `key=value` pairs. A value is written bare when it holds
/// only safe characters, else as a JSON string, so that no value can break the line or
/// forge another field.
struct Text(String);

impl Text {
    fn new(time: &str, event: &str, client: &str) -> Self {
        let mut text = Self(String::with_capacity(256));
        text.0.push_str(time);
        text.field("event", event);
        text.field("client", client);
        text
    }

    fn field(&mut self, name: &str, value: &str) {
        let bare = !value.is_empty()
            && value
                .bytes()
                .all(|b| b.is_ascii_graphic() && !matches!(b, b'"' | b'\\' | b'='));
        self.0.push(' ');
        self.0.push_str(name);
        self.0.push('=');
        match bare {
            true => self.0.push_str(value),
            false => self.0.push_str(&serde_json::Value::from(value).to_string()),
        }
    }

    fn optional(&mut self, name: &str, value: Option<&str>) {
        if let Some(value) = value {
            self.field(name, value);
        }
    }

    fn number(&mut self, name: &str, value: impl std::fmt::Display) {
        use std::fmt::Write as _;
        let _ = write!(self.0, " {name}={value}");
    }
}

impl RequestLine<'_> {
    fn text(&self) -> String {
        let mut text = Text::new(&self.time, self.event, &self.client);
        text.optional("sni", self.sni.as_deref());
        text.optional("cert_subject", self.cert_subject.as_deref());
        text.optional("cert_sha256", self.cert_sha256);
        text.optional("sub", self.sub.as_deref());
        text.optional("iss", self.iss.as_deref());
        text.field("method", self.method);
        text.field("path", self.path);
        text.number("status", self.status);
        text.number("bytes_in", self.bytes_in);
        text.number("bytes_out", self.bytes_out);
        text.number("auth_ms", self.auth_ms);
        text.number("duration_ms", self.duration_ms);
        text.0
    }
}

impl RefusalLine<'_> {
    fn text(&self) -> String {
        let mut text = Text::new(&self.time, self.event, &self.client);
        text.optional("sni", self.sni.as_deref());
        text.field("reason", self.reason);
        text.0
    }
}

/// Where lines go: a standard stream, or a file (with its path, to reopen it).
struct Destination {
    writer: Box<dyn Write + Send>,
    file: Option<std::path::PathBuf>,
}

impl Destination {
    fn open(path: &str) -> io::Result<Self> {
        let (writer, file): (Box<dyn Write + Send>, _) = match path {
            "stdout" => (Box::new(io::stdout()), None),
            "stderr" => (Box::new(io::stderr()), None),
            path => {
                let path = std::path::PathBuf::from(path);
                let file = BufWriter::with_capacity(64 * 1024, append(&path)?);
                (Box::new(file), Some(path))
            }
        };
        Ok(Self { writer, file })
    }

    /// Opens the file again under its name; on failure keeps writing where it was.
    fn reopen(&mut self) {
        let Some(path) = &self.file else { return };
        let _ = self.writer.flush();
        match append(path) {
            Ok(file) => self.writer = Box::new(BufWriter::with_capacity(64 * 1024, file)),
            Err(error) => warn!(path = %path.display(), %error, "access log could not be reopened"),
        }
    }
}

fn append(path: &std::path::Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// The writer thread: writes what arrives, flushes when the queue runs dry.
fn write_lines(mut destination: Destination, queue: &mpsc::Receiver<String>) {
    let mut failing = false;
    loop {
        if REOPEN.swap(false, Ordering::AcqRel) {
            destination.reopen();
        }
        let first = match queue.recv_timeout(WAKE) {
            Ok(line) => line,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let written = std::iter::once(first)
            .chain(queue.try_iter())
            .try_for_each(|line| writeln!(destination.writer, "{line}"))
            .and_then(|()| destination.writer.flush());
        match (written, failing) {
            (Err(error), false) => {
                warn!(%error, "access log write failed; lines are lost until it works again");
                failing = true;
            }
            (Ok(()), true) => failing = false,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_lines_quote_what_could_forge_a_field() {
        let line = RefusalLine {
            time: "2026-12-03T00:00:00.000Z".into(),
            event: "refused",
            client: "127.0.0.1:1".into(),
            sni: Some(clean("a b\nreason=fake\u{2028}x")),
            reason: "certificate_revoked",
        };
        let text = line.text();
        assert_eq!(
            text,
            "2026-12-03T00:00:00.000Z event=refused client=127.0.0.1:1 \
             sni=\"a b\\\\u{a}reason=fake\\\\u{2028}x\" reason=certificate_revoked"
        );
        assert_eq!(text.lines().count(), 1);
    }
}
