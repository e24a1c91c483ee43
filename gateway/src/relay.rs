//! Copy a flow's bytes both ways: half-close propagated, back-pressure
//! respected (a direction reads only after its last write completed), an idle
//! timeout over both directions, byte counters updated as bytes move.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// Read buffer per direction while bytes stream (four full TLS records).
pub const BUFFER: usize = 64 * 1024;
/// Read buffer per direction while a connection is quiet.
pub const SMALL: usize = 1024;

/// Bytes moved by one connection, readable while it runs.
#[derive(Debug, Default)]
pub struct Counters {
    /// Device (or client) towards the far end.
    pub up: AtomicU64,
    /// Far end towards the device (or client).
    pub down: AtomicU64,
}

/// Why a relay ended.
#[derive(Debug)]
pub enum End {
    /// Both directions reached end of stream.
    Done,
    /// No bytes either way for the idle timeout.
    Idle,
    /// Cancelled: shutdown, revocation, quarantine or policy change.
    Cancelled,
    /// A read or write failed.
    Error(std::io::Error),
}

struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        self.last_ms
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let now = self.start.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_ms.load(Ordering::Relaxed)))
    }
}

async fn pump<R, W>(
    mut r: R,
    mut w: W,
    count: &AtomicU64,
    total: &AtomicU64,
    activity: &Activity,
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    // An idle tunnel holds only the small buffer (in this future's state);
    // the large one exists only while bytes stream, so thousands of quiet
    // clinical links cost little memory and bulk transfers read in big chunks.
    let mut small = [0u8; SMALL];
    let mut big: Vec<u8> = Vec::new();
    loop {
        let n = if big.is_empty() {
            r.read(&mut small).await?
        } else {
            r.read(&mut big).await?
        };
        if n == 0 {
            // Half-close: the far side sees end of stream, the other direction goes on.
            return w.shutdown().await;
        }
        let data = if big.is_empty() {
            &small[..n]
        } else {
            &big[..n]
        };
        w.write_all(data).await?;
        w.flush().await?;
        count.fetch_add(n as u64, Ordering::Relaxed);
        total.fetch_add(n as u64, Ordering::Relaxed);
        activity.touch();
        if big.is_empty() && n == SMALL {
            big = vec![0u8; BUFFER];
        } else if !big.is_empty() && n < SMALL {
            big = Vec::new();
        }
    }
}

/// Per-flow totals the relay adds to, besides its own connection counters.
#[derive(Debug, Default)]
pub struct Totals {
    /// All bytes up.
    pub up: AtomicU64,
    /// All bytes down.
    pub down: AtomicU64,
}

/// Relay between `a` (device or client side) and `b` (far side).
#[allow(clippy::too_many_arguments)]
pub async fn relay<AR, AW, BR, BW>(
    a: (AR, AW),
    b: (BR, BW),
    idle: Duration,
    counters: Arc<Counters>,
    totals: Arc<Totals>,
    cancel: CancellationToken,
) -> End
where
    AR: AsyncRead + Unpin,
    AW: AsyncWrite + Unpin,
    BR: AsyncRead + Unpin,
    BW: AsyncWrite + Unpin,
{
    let activity = Activity {
        start: Instant::now(),
        last_ms: AtomicU64::new(0),
    };
    let (ar, aw) = a;
    let (br, bw) = b;
    let both = async {
        tokio::try_join!(
            pump(ar, bw, &counters.up, &totals.up, &activity),
            pump(br, aw, &counters.down, &totals.down, &activity)
        )
    };
    let idle_watch = async {
        loop {
            let quiet = activity.idle_for();
            if quiet >= idle {
                return;
            }
            tokio::time::sleep(idle - quiet).await;
        }
    };
    tokio::select! {
        r = both => match r {
            Ok(_) => End::Done,
            Err(e) => End::Error(e),
        },
        () = idle_watch => End::Idle,
        () = cancel.cancelled() => End::Cancelled,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::duplex;

    /// Bytes cross both ways, half-close propagates, counters add up.
    #[tokio::test]
    async fn copies_and_half_closes() {
        // Buffers larger than the payload: the test writes all before it reads.
        let (dev, dev_far) = duplex(4096);
        let (srv, srv_far) = duplex(4096);
        let counters = Arc::new(Counters::default());
        let totals = Arc::new(Totals::default());
        let task = tokio::spawn(relay(
            tokio::io::split(dev_far),
            tokio::io::split(srv_far),
            Duration::from_secs(5),
            counters.clone(),
            totals.clone(),
            CancellationToken::new(),
        ));
        let (mut dr, mut dw) = tokio::io::split(dev);
        let (mut sr, mut sw) = tokio::io::split(srv);
        // More than the small buffer, so the large one comes into play.
        dw.write_all(&[7u8; 3000]).await.expect("write");
        dw.shutdown().await.expect("half-close");
        let mut got = Vec::new();
        sr.read_to_end(&mut got)
            .await
            .expect("server sees EOF after the bytes");
        assert_eq!(got, vec![7u8; 3000]);
        // The other direction still works after the half-close.
        sw.write_all(b"ACK").await.expect("write back");
        sw.shutdown().await.expect("close");
        let mut back = Vec::new();
        dr.read_to_end(&mut back).await.expect("read back");
        assert_eq!(back, b"ACK");
        assert!(matches!(task.await.expect("join"), End::Done));
        assert_eq!(counters.up.load(Ordering::Relaxed), 3000);
        assert_eq!(counters.down.load(Ordering::Relaxed), 3);
        assert_eq!(totals.up.load(Ordering::Relaxed), 3000);
    }

    /// A silent connection ends after the idle timeout.
    #[tokio::test(start_paused = true)]
    async fn idle_timeout() {
        let (_dev, dev_far) = duplex(64);
        let (_srv, srv_far) = duplex(64);
        let end = relay(
            tokio::io::split(dev_far),
            tokio::io::split(srv_far),
            Duration::from_secs(30),
            Arc::default(),
            Arc::default(),
            CancellationToken::new(),
        )
        .await;
        assert!(matches!(end, End::Idle));
    }
}
