//! A TCP stream that reads in large chunks under TLS.
//!
//! rustls asks its transport for at most 4 KiB per read, so a 16 KiB record
//! costs four system calls or more. [`ChunkedTcp`] answers those small reads
//! from one large read of the socket. The chunk exists only while bytes
//! stream: it is released as soon as the socket has nothing more to read, so
//! thousands of quiet connections stay cheap.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Bytes read from the socket at once (the relay's streaming buffer size).
pub const CHUNK: usize = 256 * 1024;

/// A [`TcpStream`] whose small reads are served from one large socket read.
#[derive(Debug)]
pub struct ChunkedTcp {
    inner: TcpStream,
    buf: Vec<u8>,
    pos: usize,
    len: usize,
    streaming: bool,
}

impl ChunkedTcp {
    /// Wrap `inner`.
    pub fn new(inner: TcpStream) -> Self {
        ChunkedTcp {
            inner,
            buf: Vec::new(),
            pos: 0,
            len: 0,
            streaming: false,
        }
    }

    /// The socket.
    pub fn get_ref(&self) -> &TcpStream {
        &self.inner
    }
}

impl AsyncRead for ChunkedTcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.pos < this.len {
                let n = out.remaining().min(this.len - this.pos);
                out.put_slice(&this.buf[this.pos..this.pos + n]);
                this.pos += n;
                return Poll::Ready(Ok(()));
            }
            if !this.streaming || out.remaining() >= CHUNK {
                // Small messages (the common clinical case) go straight into
                // the caller's buffer; a read that fills it means a stream
                // is flowing, and the next reads use the large chunk.
                let want = out.remaining();
                let before = out.filled().len();
                let r = Pin::new(&mut this.inner).poll_read(cx, out);
                if let Poll::Ready(Ok(())) = r {
                    this.streaming = out.filled().len() - before == want && want < CHUNK;
                }
                return r;
            }
            // Wait for readiness before holding any memory: a quiet tunnel
            // gives its chunk back here.
            if this.inner.poll_read_ready(cx)?.is_pending() {
                this.buf = Vec::new();
                this.pos = 0;
                this.len = 0;
                this.streaming = false;
                return Poll::Pending;
            }
            if this.buf.is_empty() {
                this.buf = vec![0u8; CHUNK];
            }
            match this.inner.try_read(&mut this.buf) {
                Ok(0) => return Poll::Ready(Ok(())),
                Ok(n) => {
                    this.pos = 0;
                    this.len = n;
                    if n < CHUNK / 4 {
                        this.streaming = false;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for ChunkedTcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Small reads see exactly the bytes sent, in order, across chunk refills.
    #[tokio::test]
    async fn small_reads_across_chunks() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let sent = data.clone();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.expect("accept");
            s.write_all(&sent).await.expect("write");
        });
        let mut c = ChunkedTcp::new(TcpStream::connect(addr).await.expect("connect"));
        let mut got = Vec::new();
        let mut small = [0u8; 4096];
        loop {
            let n = c.read(&mut small).await.expect("read");
            if n == 0 {
                break;
            }
            got.extend_from_slice(&small[..n]);
        }
        assert_eq!(got, data);
        // Reading to the end saw the socket without data at least once.
        assert!(c.buf.is_empty() || c.pos == c.len);
    }
}
