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
    /// Takes what fits in the chunk being filled and sends the chunk when
    /// it is full: the buffer never grows past its capacity. (Extended
    /// past it, nearly every chunk was reallocated to twice its size and
    /// copied, a fifth of `/state`'s writing.)
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let room = STREAM_CHUNK - self.buf.len();
        let taken = bytes.len().min(room);
        self.buf.extend_from_slice(&bytes[..taken]);
        if self.buf.len() == STREAM_CHUNK {
            let full = std::mem::replace(&mut self.buf, Vec::with_capacity(STREAM_CHUNK));
            self.send(full)?;
        }
        Ok(taken)
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
    async fn chunks_are_full_and_never_grow_past_their_size_whatever_the_writes() {
        // Pieces that straddle a chunk's end, and one bigger than a chunk.
        let pieces: Vec<Vec<u8>> = vec![
            vec![b'a'; STREAM_CHUNK - 10],
            vec![b'b'; 300],
            vec![b'c'; STREAM_CHUNK * 2 + 7],
            vec![b'd'; 64 * 1024],
        ];
        let total: usize = pieces.iter().map(Vec::len).sum();
        let expected: Vec<u8> = pieces.concat();
        let response = streamed_json(move |out| {
            for piece in &pieces {
                out.write_all(piece)?;
            }
            Ok(())
        });
        let mut body = response.into_body().into_data_stream();
        let mut got = Vec::new();
        let mut sizes = Vec::new();
        while let Some(chunk) = tokio_stream::StreamExt::next(&mut body).await {
            let chunk = chunk.expect("chunk");
            sizes.push(chunk.len());
            got.extend_from_slice(&chunk);
        }
        let (last, full) = sizes.split_last().expect("chunks");
        assert!(full.iter().all(|n| *n == STREAM_CHUNK), "{sizes:?}");
        assert_eq!(*last, total % STREAM_CHUNK, "{sizes:?}");
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
