//! The log of a test binary, captured as text by one subscriber for the whole binary (set up on
//! first use). Each test finds its own lines by a value only it uses (a request id, a path).
//! Include with `#[path = "common/logs.rs"] mod logs;`.

#![allow(dead_code)] // each test binary uses a part of this

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The log of this test binary so far (the subscriber is set up on first use).
pub fn logs() -> String {
    static LOGS: OnceLock<Buffer> = OnceLock::new();
    let buffer = LOGS.get_or_init(|| {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        tracing_subscriber::registry()
            .with(tracing_subscriber::EnvFilter::new(
                "info,pingora=warn,pingora_core=warn,pingora_proxy=warn",
            ))
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_writer(move || writer.clone()),
            )
            .try_init()
            .expect("the only subscriber in this test binary");
        buffer
    });
    String::from_utf8_lossy(&buffer.0.lock().unwrap()).into_owned()
}
