//! The compressing body: a response body encoded as it streams, frame by frame.
//!
//! Each data frame read from the upstream's body is written into an `async-compression`
//! encoder whose sink is a `Vec`; whatever compressed output that produced leaves as the
//! next frame. Memory per stream is the encoder's state (its window: 32 KiB for gzip,
//! 512 KiB for zstd and brotli) plus one frame in and its output: never the body.
//! When the upstream goes quiet (its body is pending) with input not yet out, the encoder
//! is flushed (a sync flush, a few bytes of framing), so a client of a slow or streaming
//! upstream gets what the upstream sent without waiting for more; a fast upstream's
//! frames, ready back to back, pay no flush. Trailers pass after the last frame.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use async_compression::Level;
use async_compression::tokio::write::{BrotliEncoder, GzipEncoder, ZstdEncoder};
use bytes::Bytes;
use http::HeaderMap;
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::AsyncWrite;

use super::negotiate::Encoding;
use super::stats::CompressStats;

/// Brotli's and zstd's window, as a power of two: 512 KiB (ngx_brotli's default). Their
/// own defaults (brotli 4 MiB; zstd 2 MiB at level 3) cost a node about 19 MB per brotli
/// stream (measured: the 10 MB end-to-end test), and answers under 512 KiB compress the
/// same either way.
const WINDOW_LOG: i32 = 19;

/// One encoder writing into memory.
enum Encoder {
    Gzip(GzipEncoder<Vec<u8>>),
    // Boxed: brotli's state is 5.6 KiB inline, the others' a few hundred bytes.
    Brotli(Box<BrotliEncoder<Vec<u8>>>),
    Zstd(ZstdEncoder<Vec<u8>>),
}

impl Encoder {
    fn new(encoding: Encoding, level: i32) -> Encoder {
        match encoding {
            Encoding::Gzip => Encoder::Gzip(GzipEncoder::with_quality(Vec::new(), Level::Precise(level))),
            Encoding::Brotli => {
                let params = async_compression::brotli::EncoderParams::default()
                    .quality(Level::Precise(level))
                    .window_size(WINDOW_LOG);
                Encoder::Brotli(Box::new(BrotliEncoder::with_params(Vec::new(), params)))
            }
            Encoding::Zstd => {
                let window = [async_compression::zstd::CParameter::window_log(WINDOW_LOG as u32)];
                Encoder::Zstd(ZstdEncoder::with_quality_and_params(Vec::new(), Level::Precise(level), &window))
            }
        }
    }

    fn writer(&mut self) -> Pin<&mut (dyn AsyncWrite + Send + Unpin)> {
        match self {
            Encoder::Gzip(e) => Pin::new(e),
            Encoder::Brotli(e) => Pin::new(&mut **e),
            Encoder::Zstd(e) => Pin::new(e),
        }
    }

    fn output(&mut self) -> &mut Vec<u8> {
        match self {
            Encoder::Gzip(e) => e.get_mut(),
            Encoder::Brotli(e) => e.get_mut(),
            Encoder::Zstd(e) => e.get_mut(),
        }
    }

    /// Writes all of `data`. The sink is memory: the encoder never waits on it.
    fn write(&mut self, cx: &mut Context<'_>, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            match self.writer().poll_write(cx, data) {
                Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                Poll::Ready(Ok(n)) => data = data.get(n..).unwrap_or_default(),
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => return Err(io::Error::other("compressor waited on memory")),
            }
        }
        Ok(())
    }

    /// Flushes (`end`: finishes the stream), through to the sink.
    fn flush(&mut self, cx: &mut Context<'_>, end: bool) -> io::Result<()> {
        let polled = if end { self.writer().poll_shutdown(cx) } else { self.writer().poll_flush(cx) };
        match polled {
            Poll::Ready(result) => result,
            Poll::Pending => Err(io::Error::other("compressor waited on memory")),
        }
    }

    /// The compressed bytes produced so far, taken.
    fn take(&mut self) -> Option<Bytes> {
        let out = self.output();
        (!out.is_empty()).then(|| Bytes::from(std::mem::take(out)))
    }
}

/// A body compressed as it streams.
pub(crate) struct Compressing<B> {
    inner: B,
    encoder: Encoder,
    encoding: Encoding,
    /// Input written since the last flush.
    unflushed: bool,
    /// The inner body has ended (its trailers, if any, kept for the end).
    input_done: bool,
    done: bool,
    trailers: Option<HeaderMap>,
    stats: Arc<CompressStats>,
}

impl<B> std::fmt::Debug for Compressing<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compressing").field("encoding", &self.encoding).field("done", &self.done).finish()
    }
}

impl<B> Compressing<B> {
    pub(crate) fn new(inner: B, encoding: Encoding, level: i32, stats: Arc<CompressStats>) -> Compressing<B> {
        Compressing {
            inner,
            encoder: Encoder::new(encoding, level),
            encoding,
            unflushed: false,
            input_done: false,
            done: false,
            trailers: None,
            stats,
        }
    }

    fn out(&mut self) -> Option<Bytes> {
        let data = self.encoder.take()?;
        self.stats.bytes_out[self.encoding.index()].fetch_add(data.len() as u64, Ordering::Relaxed);
        Some(data)
    }
}

impl<B> Body for Compressing<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<crate::support::BoxError>,
{
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
            }
            if this.input_done {
                this.encoder.flush(cx, true)?;
                this.done = true;
                if let Some(data) = this.out() {
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                continue;
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        this.stats.bytes_in[this.encoding.index()].fetch_add(data.len() as u64, Ordering::Relaxed);
                        this.encoder.write(cx, &data)?;
                        this.unflushed |= !data.is_empty();
                        if let Some(out) = this.out() {
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            this.trailers = Some(trailers);
                        }
                    }
                },
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(io::Error::other(e.into())))),
                Poll::Ready(None) => this.input_done = true,
                Poll::Pending => {
                    if this.unflushed {
                        this.unflushed = false;
                        this.encoder.flush(cx, false)?;
                        if let Some(out) = this.out() {
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
