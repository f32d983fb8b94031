//! The JSON-lines copy of the audit trail (`audit.stream`), for log shippers: each event, once
//! its change committed, as one line of `admin::views::AuditEvent` (the API's shape), to
//! standard output or appended to a file. The database stays the record (hash-chained,
//! checked by `runta audit verify`); a line that cannot be written is logged, never fails the
//! change, which has committed already.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::{Arc, Mutex};

use crate::admin::views::AuditEvent;
use crate::config::{AuditStream, ConfigError};
use crate::store::{AuditEventRow, AuditSink};

/// A sink writing each event as a JSON line where `stream` says. A file is opened (created
/// with mode 0600 if absent) now, so a path that cannot be written fails at start-up.
pub fn open(stream: &AuditStream) -> Result<AuditSink, ConfigError> {
    let out: Box<dyn Write + Send> = match stream {
        AuditStream::Stdout => Box::new(std::io::stdout()),
        AuditStream::File(path) => Box::new(
            OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| ConfigError {
                    key: "audit.stream".into(),
                    message: format!("cannot open {} for appending: {e}", path.display()),
                })?,
        ),
    };
    let out = Mutex::new(out);
    Ok(Arc::new(move |event: &AuditEventRow| {
        let mut line = match serde_json::to_string(&AuditEvent::from(event.clone())) {
            Ok(line) => line,
            Err(err) => {
                tracing::error!(seq = event.seq, error = %err, "an audit event could not be encoded for audit.stream");
                return;
            }
        };
        line.push('\n');
        let mut out = out.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        // One write of the whole line, so lines of concurrent events never interleave.
        if let Err(err) = out.write_all(line.as_bytes()).and_then(|()| out.flush()) {
            tracing::error!(seq = event.seq, error = %err, "an audit event could not be written to audit.stream");
        }
    }))
}
