//! Bodies written as they are made: `/api/v1/state` streamed a chunk at a
//! time from a blocking thread, never held whole.

use super::*;

/// Bytes of a streamed body handed to the connection at a time.
pub(super) const STREAM_CHUNK: usize = 256 * 1024;

/// Chunks of a streamed body made ahead of the connection: enough that a
/// writer and a connection that are scheduled unevenly (a busy master)
/// rarely wait on each other, few enough that a slow client holds 8 MB of
/// the master's memory, not the whole body.
pub(super) const STREAM_AHEAD: usize = 32;

/// Where a streamed body is written: full chunks go to the connection as
/// they are made.
pub(super) struct ChunkSink {
    buf: Vec<u8>,
    tx: tokio::sync::mpsc::Sender<std::io::Result<axum::body::Bytes>>,
}

impl ChunkSink {
    fn send(&mut self, chunk: Vec<u8>) -> std::io::Result<()> {
        self.tx
            .blocking_send(Ok(chunk.into()))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client went away"))
    }
}

impl std::io::Write for ChunkSink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= STREAM_CHUNK {
            let full = std::mem::replace(&mut self.buf, Vec::with_capacity(STREAM_CHUNK));
            self.send(full)?;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let last = std::mem::take(&mut self.buf);
        self.send(last)
    }
}

/// JSON written on a blocking thread and sent as it is made. A big
/// cluster's `/api/v1/state` is tens of megabytes: made whole first, each
/// request cost a buffer of its size (faulting in its fresh pages was a
/// tenth of the HTTP workers' time under load) and its first byte waited
/// for its last.
pub(super) fn streamed_json<W>(write: W) -> Response
where
    W: FnOnce(&mut ChunkSink) -> std::io::Result<()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(STREAM_AHEAD);
    tokio::task::spawn_blocking(move || {
        let mut sink = ChunkSink {
            buf: Vec::with_capacity(STREAM_CHUNK),
            tx,
        };
        if let Err(e) = write(&mut sink).and_then(|()| std::io::Write::flush(&mut sink)) {
            // Ends the body short, so the client sees it broken (or was
            // gone already).
            let _ = sink.tx.blocking_send(Err(e));
        }
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        axum::body::Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[tokio::test]
    async fn a_streamed_body_of_many_chunks_arrives_whole_and_in_order() {
        let body: Vec<u8> = (0..STREAM_CHUNK * 5 + 123)
            .map(|i| (i % 251) as u8)
            .collect();
        let expected = body.clone();
        let response = streamed_json(move |out| {
            // Written in uneven pieces, as views are.
            for piece in body.chunks(1000) {
                out.write_all(piece)?;
            }
            Ok(())
        });
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        let got = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body");
        assert_eq!(got.len(), expected.len());
        assert!(got == expected, "the body as written");
    }

    #[tokio::test]
    async fn a_client_that_goes_away_stops_the_writer() {
        let (done, result) = oneshot::channel();
        let response = streamed_json(move |out| {
            let mut written = 0usize;
            let outcome = loop {
                if let Err(e) = out.write_all(&[b' '; 1000]) {
                    break e;
                }
                written += 1000;
                if written > 1 << 30 {
                    panic!("wrote a gigabyte to a client that was gone");
                }
            };
            let _ = done.send((outcome.kind(), written));
            Ok(())
        });
        drop(response);
        let (kind, written) = result.await.expect("the writer ended");
        assert_eq!(kind, std::io::ErrorKind::BrokenPipe);
        assert!(
            written <= STREAM_CHUNK * (STREAM_AHEAD + 2),
            "{written} bytes made for nobody"
        );
    }

    #[tokio::test]
    async fn a_writer_that_fails_ends_the_body_short() {
        let response = streamed_json(|out| {
            out.write_all(b"{\"agents\":[")?;
            Err(std::io::Error::other("a view would not serialize"))
        });
        let got = axum::body::to_bytes(response.into_body(), usize::MAX).await;
        assert!(
            got.is_err(),
            "a broken body, not a short one that looks whole"
        );
    }
}
